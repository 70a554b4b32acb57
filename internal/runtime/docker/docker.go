// Package docker is reeve's runtime on a Docker Engine, through the official
// moby client (github.com/moby/moby/client).
//
// Everything reeve creates carries io.reeve.* labels, and everything reeve
// knows about it is read back from the engine: labels (immutable) for the
// app, service, config hash, image, networks and volumes, and the container
// name <service>_<commit>_<h8> for the release commit, the one thing that
// changes without a new container (UpdateMetadata renames).
package docker

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"reeve.dev/reeve/internal/runtime"
)

// Labels reeve puts on what it creates. The release's own labels are added
// next to them; release labels may only use io.reeve.update.* and
// io.reeve.features.*, so they never collide.
const (
	LabelManaged      = "io.reeve.managed" // "true" on containers, networks and volumes reeve owns
	LabelAppUUID      = "io.reeve.app-uuid"
	LabelAppID        = "io.reeve.app-id"
	LabelServiceName  = "io.reeve.service-name"
	LabelConfigHash   = "io.reeve.config-hash"
	LabelImage        = "io.reeve.image"    // normalized image reference
	LabelNetworks     = "io.reeve.networks" // release network names, sorted, comma-joined
	LabelVolumes      = "io.reeve.volumes"  // release volume names, sorted, comma-joined
	LabelNetworkName  = "io.reeve.network-name"
	LabelVolumeName   = "io.reeve.volume-name"
	LabelBackupOf     = "io.reeve.backup-of"     // on a backup volume: the engine name of the volume it copies
	LabelBackupHash   = "io.reeve.backup-hash"   // on a backup volume: the config hash of the volume it copies
	LabelBackupID     = "io.reeve.backup-id"     // on a backup volume: a random token naming this backup
	LabelRestoredFrom = "io.reeve.restored-from" // on a volume restore made: the backup-id it is restored from
	LabelHelper       = "io.reeve.helper"        // "true" on helper containers that copy volume data
	LabelHelperOwner  = "io.reeve.helper-owner"  // on a helper: the namespace (io.reeve.managed value) of the runtime that made it
)

// Options configures a Runtime.
type Options struct {
	// Host is the engine address, such as unix:///var/run/docker.sock;
	// "" means $DOCKER_HOST, else the default socket.
	Host string
	// Credentials maps a registry host (as in an image reference, such as
	// "registry.example.com:5000" or "docker.io") to its credentials;
	// Fetch uses them.
	Credentials map[string]runtime.Auth
	// Namespace separates the objects of several agents sharing one
	// engine (tests, a development agent beside a real one): it is the
	// value of the io.reeve.managed label, "true" when empty, and a runtime
	// sees only its own namespace. Engine names of networks and volumes
	// start with "<namespace>_".
	Namespace string
	// Logger gets what the runtime does on its own (restoring volume data,
	// removing leftovers); nil means slog.Default().
	Logger *slog.Logger
	// ReserveBytes is the disk space Fetch keeps free on the engine's data
	// disk beyond an image's size; an image that does not fit is refused
	// with runtime.ErrNoSpace before anything is downloaded. Default
	// 64 MiB; negative turns the check off.
	ReserveBytes int64
}

// Runtime is runtime.Runtime on a Docker Engine. It is safe for concurrent
// use.
type Runtime struct {
	c     *client.Client
	host  string
	creds map[string]runtime.Auth
	log   *slog.Logger

	locks keyedMutex // serializes create/replace of one network or volume name

	// Helper containers are marked with managed (LabelHelperOwner);
	// Cleanup removes another namespace's only once they are older than
	// helperMaxAge, in case another agent on the same engine is copying.
	helperMaxAge time.Duration
	managed      string // value of LabelManaged on what this runtime owns
	prefix       string // put before app UUIDs in engine names: "" or "<namespace>_"
	reserve      int64  // Options.ReserveBytes
}

func namespacePrefix(ns string) string {
	if ns == "" {
		return ""
	}
	return ns + "_"
}

var _ runtime.Runtime = (*Runtime)(nil)

// New returns a Runtime for the engine at opts.Host. It does not contact
// the engine, so it succeeds while the engine is down; methods then return
// errors wrapping runtime.ErrUnavailable. The API version is negotiated on
// the first request that reaches the engine.
func New(ctx context.Context, opts Options) (*Runtime, error) {
	clientOpts := []client.Opt{client.FromEnv}
	if opts.Host != "" {
		clientOpts = append(clientOpts, client.WithHost(opts.Host))
	}
	c, err := client.New(clientOpts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %q: %w", opts.Host, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.ReserveBytes == 0 {
		opts.ReserveBytes = 64 << 20
	}
	r := &Runtime{
		c:            c,
		host:         c.DaemonHost(),
		creds:        opts.Credentials,
		reserve:      opts.ReserveBytes,
		log:          log.With("runtime", "docker"),
		managed:      cmp.Or(opts.Namespace, "true"),
		prefix:       namespacePrefix(opts.Namespace),
		helperMaxAge: 10 * time.Minute,
	}
	return r, nil
}

// Close releases the client's connections.
func (r *Runtime) Close() error { return r.c.Close() }

// Name returns "docker".
func (r *Runtime) Name() string { return "docker" }

// Host returns the address of the engine the runtime talks to.
func (r *Runtime) Host() string { return r.host }

// Ping checks that the engine answers, negotiating the API version.
func (r *Runtime) Ping(ctx context.Context) error {
	if _, err := r.c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return r.wrap(err, "ping docker engine")
	}
	return nil
}

// engineError is an error from the engine (or the client) with a message
// fit for reeve's logs: lowercase, without the client's "Error response from
// daemon: " prefix. It still unwraps to the original error, and to
// runtime.ErrNotFound or runtime.ErrUnavailable when that is what it means.
type engineError struct {
	msg  string
	err  error
	kind error
}

func (e *engineError) Error() string { return e.msg }

func (e *engineError) Unwrap() []error {
	if e.kind != nil {
		return []error{e.kind, e.err}
	}
	return []error{e.err}
}

// wrap names what was acted on and maps engine errors: a connection failure
// wraps runtime.ErrUnavailable (with the engine address), not found wraps
// runtime.ErrNotFound.
func (r *Runtime) wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	what := fmt.Sprintf(format, args...)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if client.IsErrConnectionFailed(err) {
		return fmt.Errorf("%s: %w", what, &engineError{
			msg:  fmt.Sprintf("%v: cannot connect to the docker engine at %s", runtime.ErrUnavailable, r.host),
			err:  err,
			kind: runtime.ErrUnavailable,
		})
	}
	e := &engineError{msg: cleanMessage(err.Error()), err: err}
	if cerrdefs.IsNotFound(err) {
		e.kind = runtime.ErrNotFound
	}
	return fmt.Errorf("%s: %w", what, e)
}

// cleanMessage strips the client's prefix and lowercases the first letter of
// a message (unless it starts an acronym such as "API").
func cleanMessage(s string) string {
	s = strings.TrimPrefix(s, "Error response from daemon: ")
	s = strings.TrimPrefix(s, "Error: ")
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 || !unicode.IsUpper(r) {
		return s
	}
	if r2, _ := utf8.DecodeRuneInString(s[n:]); unicode.IsUpper(r2) {
		return s
	}
	return string(unicode.ToLower(r)) + s[n:]
}

func isNotFound(err error) bool { return err != nil && cerrdefs.IsNotFound(err) }

func isConflict(err error) bool { return err != nil && cerrdefs.IsConflict(err) }

func randomToken() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic("docker: no randomness: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// shortHash is the first 8 hex characters of sha256(s).
func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}

// keyedMutex hands out one mutex per key.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

// lock locks key and returns its unlock function.
func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
