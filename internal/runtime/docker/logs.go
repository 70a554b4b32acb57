package docker

import (
	"context"
	"errors"
	"time"

	"reeve.dev/reeve/internal/runtime"
)

// Logs follows a container's output (see runtime.Runtime).
func (r *Runtime) Logs(ctx context.Context, id string, since time.Time, fn func(runtime.LogEntry) error) error {
	return errors.New("not implemented yet")
}
