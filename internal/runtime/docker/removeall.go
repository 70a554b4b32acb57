package docker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// RemoveAll removes everything of this runtime's namespace from the
// engine: containers, networks, volumes (their data too) and helpers, and
// the images whose reference image says to remove. It is for wiping a
// device's apps on purpose, and for tests and benchmarks cleaning up after
// themselves; the agent itself never calls it.
//
// A create the engine is still carrying out (its client may have given up)
// can add a container after the listing, which then holds its image: what
// fails is tried again, on a fresh listing, a few times.
func (r *Runtime) RemoveAll(ctx context.Context, image func(ref string) bool) error {
	var err error
	for attempt := 1; ; attempt++ {
		if err = r.removeAll(ctx, image); err == nil || attempt == 3 {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * time.Second):
		}
	}
}

func (r *Runtime) removeAll(ctx context.Context, image func(ref string) bool) error {
	snap, err := r.Snapshot(ctx)
	if err != nil {
		return fmt.Errorf("remove all: %w", err)
	}
	var errs []error
	for _, c := range snap.Containers {
		errs = append(errs, r.Remove(ctx, c.ID))
	}
	for _, n := range snap.Networks {
		errs = append(errs, r.RemoveNetwork(ctx, n.AppUUID, n.Name))
	}
	for _, v := range snap.Volumes {
		errs = append(errs, r.RemoveVolume(ctx, v.AppUUID, v.Name))
	}
	errs = append(errs, r.Cleanup(ctx))
	if image != nil {
		for _, img := range snap.Images {
			for _, ref := range img.Refs {
				if image(ref) {
					errs = append(errs, r.RemoveImage(ctx, ref))
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove all: %w", err)
	}
	return nil
}
