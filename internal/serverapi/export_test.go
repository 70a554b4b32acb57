package serverapi

import "time"

// SetLogKeepAlive sets how long a followed log stays silent before an
// empty line; it returns the undo.
func SetLogKeepAlive(d time.Duration) (undo func()) {
	old := logKeepAlive.Swap(int64(d))
	return func() { logKeepAlive.Store(old) }
}

// SetLogBodyIdle sets how long a log-stream body may send nothing; it
// returns the undo.
func SetLogBodyIdle(d time.Duration) (undo func()) {
	old := logBodyIdle.Swap(int64(d))
	return func() { logBodyIdle.Store(old) }
}
