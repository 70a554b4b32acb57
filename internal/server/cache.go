package server

import (
	"context"
	"sync"

	"reeve.dev/reeve"
)

// polled is what a device's polls need, read from the store under one
// generation of its fleet: the device (for its key) and its built target.
// A poll whose fleet is still at that generation is answered from here
// without touching the store; every change that can alter either (a
// release, a variable, a pin, a rename, a revoked or exchanged key, a
// deletion, and any of these in a dependent fleet of the fleet, whose
// devices are in its gateways' targets) notifies the fleet and so ends
// the generation.
//
// The cache is per process, which is right for one server on SQLite.
// Several servers on one PostgreSQL database will have to carry the
// notifications between them (LISTEN/NOTIFY) to keep it.
type polled struct {
	gen    uint64
	dev    reeve.Device
	target Target
}

type pollCache struct {
	mu sync.Mutex
	m  map[string]*polled
}

// maxPolled bounds the cache; past it, it starts again empty.
const maxPolled = 200_000

func (c *pollCache) get(uuid string) *polled {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[uuid]
}

func (c *pollCache) put(uuid string, p *polled) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxPolled {
		clear(c.m)
	}
	c.m[uuid] = p
}

// cachedDevice returns the device from the cache while its fleet's
// generation holds.
func (s *Server) cachedDevice(uuid string) (*polled, bool) {
	p := s.polls.get(uuid)
	if p == nil || p.gen != s.hub.gen(p.dev.FleetID) {
		return nil, false
	}
	return p, true
}

// polledDevice returns the device and its target, from the cache or read
// afresh (and cached) when its fleet changed since. fleetID is the fleet
// the caller saw the device in: devices do not move between fleets.
func (s *Server) polledDevice(ctx context.Context, uuid string, fleetID int64) (*polled, error) {
	// A gateway's target holds its dependent fleets': their changes end
	// its fleet's generation once the hub knows them.
	if err := s.linkFleets(ctx); err != nil {
		return nil, err
	}
	g := s.hub.gen(fleetID) // before reading: a change after it ends what is read
	if p := s.polls.get(uuid); p != nil && p.gen == g {
		return p, nil
	}
	d, err := s.st.Device(ctx, uuid)
	if err != nil {
		return nil, err
	}
	t, err := s.TargetOf(ctx, d)
	if err != nil {
		return nil, err
	}
	p := &polled{gen: g, dev: d, target: t}
	if d.FleetID == fleetID {
		s.polls.put(uuid, p)
	}
	return p, nil
}
