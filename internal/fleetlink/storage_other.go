//go:build !linux

package fleetlink

// storage is not read on this system.
func storage(string) (total, used uint64, ok bool) { return 0, 0, false }
