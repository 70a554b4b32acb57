package docker

import (
	"context"
	"time"
)

// SetHelperMaxAge sets how old another runtime's helper containers must be
// before Cleanup removes them.
func SetHelperMaxAge(r *Runtime, d time.Duration) { r.helperMaxAge = d }

// BackupName is the engine name of the backup of volume (an engine name).
func BackupName(volume string) string { return backupName(volume) }

// HelperImageOf is the image helper containers are made from, loaded if
// missing.
func HelperImageOf(ctx context.Context, r *Runtime) (string, error) { return r.helperImage(ctx) }
