package server

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"reeve.dev/reeve"
)

// hub tells long polls that something that may change a device's target
// happened. It is keyed by fleet: every change (a release, a variable, a
// pin, a rename) touches one fleet or one device of it, and waiters
// recompute their target to see whether theirs changed.
//
// A dependent fleet's devices are in the targets of its parent fleet's
// devices (their gateways), so a change of a dependent fleet is also one
// of its parent: the hub knows each dependent fleet's parent, and notify
// wakes both. It learns them from the store once (linkFleets), then from
// CreateFleet and DeleteFleet.
//
// One server process only; several servers on one database would carry
// these over the database (PostgreSQL LISTEN/NOTIFY).
//
// Each fleet also has a generation, raised by every notify: what was read
// from the store under one generation is still true while it lasts, which
// is what lets the server answer polls from memory.
type hub struct {
	mu      sync.Mutex
	chs     map[int64]chan struct{}
	gens    map[int64]uint64
	parents map[int64]int64 // dependent fleet → its parent (gateway) fleet
	linked  atomic.Bool     // parents holds every dependent fleet of the store
}

func newHub() *hub {
	return &hub{chs: map[int64]chan struct{}{}, gens: map[int64]uint64{}, parents: map[int64]int64{}}
}

// gen returns the fleet's generation. Read it before reading the store.
func (h *hub) gen(fleetID int64) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gens[fleetID]
}

// wait returns a channel closed at the next change of the fleet. Take it
// before reading the state it guards, so no change is missed.
func (h *hub) wait(fleetID int64) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch, ok := h.chs[fleetID]
	if !ok {
		ch = make(chan struct{})
		h.chs[fleetID] = ch
	}
	return ch
}

// notify wakes every waiter of the fleet, and of its parent when it is a
// dependent fleet, and ends their generations. Call it after the change
// is in the store.
func (h *hub) notify(fleetID int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.end(fleetID)
	if parent, ok := h.parents[fleetID]; ok {
		h.end(parent)
	}
}

// end ends the fleet's generation and wakes its waiters (h.mu held).
func (h *hub) end(fleetID int64) {
	h.gens[fleetID]++
	if ch, ok := h.chs[fleetID]; ok {
		close(ch)
		delete(h.chs, fleetID)
	}
}

// link records a dependent fleet's parent; a fleet that is not dependent
// is left out.
func (h *hub) link(f reeve.Fleet) {
	if !f.Dependent() || f.ParentID == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.parents[f.ID] = f.ParentID
}

// unlink forgets a removed fleet's parent.
func (h *hub) unlink(fleetID int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.parents, fleetID)
}

// children lists the dependent fleets whose parent is fleetID, by ID.
func (h *hub) children(fleetID int64) []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []int64
	for child, parent := range h.parents {
		if parent == fleetID {
			out = append(out, child)
		}
	}
	slices.Sort(out)
	return out
}

// linkFleets makes sure the hub knows the parent of every dependent fleet
// in the store: it reads them the first time and does nothing after. Call
// it before reading a generation that targets are built under. An error
// leaves the hub to read them at the next call.
func (s *Server) linkFleets(ctx context.Context) error {
	if s.hub.linked.Load() {
		return nil
	}
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	if s.hub.linked.Load() {
		return nil
	}
	fleets, err := s.st.Fleets(ctx)
	if err != nil {
		return err
	}
	// A fleet created meanwhile was linked by CreateFleet; one removed
	// meanwhile may be linked again here, which only wakes its parent
	// once too often.
	for _, f := range fleets {
		s.hub.link(f)
	}
	s.hub.linked.Store(true)
	return nil
}
