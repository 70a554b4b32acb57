package server

import "sync"

// hub tells long polls that something that may change a device's target
// happened. It is keyed by fleet: every change (a release, a variable, a
// pin, a rename) touches one fleet or one device of it, and waiters
// recompute their target to see whether theirs changed.
//
// One server process only; several servers on one database would carry
// these over the database (PostgreSQL LISTEN/NOTIFY).
//
// Each fleet also has a generation, raised by every notify: what was read
// from the store under one generation is still true while it lasts, which
// is what lets the server answer polls from memory.
type hub struct {
	mu   sync.Mutex
	chs  map[int64]chan struct{}
	gens map[int64]uint64
}

func newHub() *hub { return &hub{chs: map[int64]chan struct{}{}, gens: map[int64]uint64{}} }

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

// notify wakes every waiter of the fleet and ends its generation. Call it
// after the change is in the store.
func (h *hub) notify(fleetID int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gens[fleetID]++
	if ch, ok := h.chs[fleetID]; ok {
		close(ch)
		delete(h.chs, fleetID)
	}
}
