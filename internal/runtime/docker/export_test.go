package docker

import "time"

// SetHelperMaxAge sets how old another runtime's helper containers must be
// before Cleanup removes them.
func SetHelperMaxAge(r *Runtime, d time.Duration) { r.helperMaxAge = d }
