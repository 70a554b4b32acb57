// Package runtime defines what reeve needs from a container or process
// runtime. Every implementation passes the suite in runtimetest.
package runtime

import (
	"context"
	"errors"
	"io"
	"time"

	"reeve.dev/reeve"
)

// Progress is how far an image download has got.
type Progress struct {
	Current int64 // bytes done
	Total   int64 // bytes in all, 0 while unknown
}

// Percent returns the download progress from 0 to 100.
func (p Progress) Percent() int {
	if p.Total <= 0 {
		return 0
	}
	pc := int(p.Current * 100 / p.Total)
	return min(max(pc, 0), 100)
}

// LogEntry is one line a container wrote.
type LogEntry struct {
	Time    time.Time // the runtime's timestamp of the line
	Stderr  bool
	Message string // without its newline, cut to reeve.MaxLogLineBytes
}

// Auth is a credential for one registry.
type Auth struct {
	Username string
	Password string
}

// ErrNotFound is returned (wrapped) when the object acted on does not exist.
var ErrNotFound = errors.New("not found")

// ErrImageNotPresent is returned (wrapped, with ErrNotFound) by ExportDir
// for an image that is not on the device: it may still be downloading.
var ErrImageNotPresent = errors.New("image not on the device")

// ErrUnavailable is returned (wrapped) when the runtime cannot be reached.
var ErrUnavailable = errors.New("runtime unavailable")

// ErrLogsUnreadable is returned (wrapped) by Logs for a container whose
// output the runtime keeps nowhere to read back (a log driver such as
// "none"): asking again will not help while the container exists.
var ErrLogsUnreadable = errors.New("logs cannot be read back")

// ErrNoSpace is returned (wrapped) by Fetch when the image does not fit on
// the disk the runtime keeps images on; nothing was downloaded. Removing
// images no release needs may make room.
var ErrNoSpace = errors.New("not enough disk space")

// Runtime runs services. Every method is safe for concurrent use, and every
// method that acts is idempotent where the engine allows: removing what is
// already gone returns nil, creating what already exists with the same
// definition returns nil.
type Runtime interface {
	// Name is "docker" or "process".
	Name() string
	// Ping checks that the runtime answers.
	Ping(ctx context.Context) error
	// Snapshot reads everything reeve owns, fresh.
	Snapshot(ctx context.Context) (reeve.Snapshot, error)

	// Fetch pulls an image, reporting progress as it goes.
	Fetch(ctx context.Context, image string, progress func(Progress)) error
	// RemoveImage removes an image by reference.
	RemoveImage(ctx context.Context, image string) error

	// Create creates a service's container without starting it and returns
	// its ID. The container's identity (app, service, commit, config hash)
	// is recorded in the runtime so that Snapshot can read it back.
	Create(ctx context.Context, spec reeve.ServiceSpec) (string, error)
	// Start starts a created or stopped container.
	Start(ctx context.Context, id string) error
	// Stop stops a container, killing it after grace (0: the service's
	// stop_grace_period, else 10 s).
	Stop(ctx context.Context, id string, grace time.Duration) error
	// Remove removes a container, stopping it first if needed.
	Remove(ctx context.Context, id string) error
	// UpdateMetadata moves a container to a new release commit without
	// touching the running process.
	UpdateMetadata(ctx context.Context, id string, spec reeve.ServiceSpec) error

	CreateNetwork(ctx context.Context, spec reeve.NetworkSpec) error
	RemoveNetwork(ctx context.Context, appUUID, name string) error

	// CreateVolume creates a volume; if a copy left by an interrupted
	// ReplaceVolume exists, its data is restored into the new volume.
	CreateVolume(ctx context.Context, spec reeve.VolumeSpec) error
	// ReplaceVolume gives an existing volume a new definition and keeps its
	// data. It is safe to interrupt at any point: the data is always in the
	// old volume or in a copy that CreateVolume restores.
	ReplaceVolume(ctx context.Context, spec reeve.VolumeSpec) error
	RemoveVolume(ctx context.Context, appUUID, name string) error

	// Logs calls fn with each line container id writes whose timestamp is
	// at or after since (the zero time: from its first line), in order,
	// and goes on following it, across its restarts, until ctx ends
	// (ctx.Err()), the container is removed (nil) or fn fails (that error).
	// A container that never existed: ErrNotFound. A container whose
	// output the runtime cannot read back (a log driver that keeps
	// nothing): ErrLogsUnreadable, wrapped in an error saying why.
	Logs(ctx context.Context, id string, since time.Time, fn func(LogEntry) error) error

	// ExportDir writes to w an uncompressed tar of the directory dir (an
	// absolute path) of image, a reference as given to Fetch or an image
	// ID, which must be on the device already: it is never downloaded.
	// Entry names are relative to dir ("fw/a.bin" for dir/fw/a.bin,
	// directories end in "/"); dir itself has no entry. Regular files,
	// directories, symlinks (as links: never followed, whatever their
	// target) and hard links (to entries of the tar) keep their modes;
	// nothing else is promised. dir may be, or pass through, a symlink
	// of the image, resolved inside the image. The tar is the image's
	// content as it is, not checked: whoever unpacks or serves it
	// sanitizes it first. An image not on the device: ErrNotFound
	// (wrapped); dir missing in the image, or not a directory:
	// ErrNotFound wrapped in an error that says so. On an error, what was
	// written to w is a partial tar. It creates nothing that outlives the
	// call except, after a crash, what Cleanup removes; w should be quick
	// to take the bytes (a file, a pipe to one), since Cleanup waits for
	// exports in progress.
	ExportDir(ctx context.Context, image, dir string, w io.Writer) error

	// Cleanup removes what reeve left behind and no longer needs (helper
	// containers of interrupted volume copies and exports). It removes no
	// images: images reeve no longer needs are removed through
	// RemoveImage.
	Cleanup(ctx context.Context) error
}
