// Package testimage is test support for tests that drive a real Docker
// engine: it builds small images around the test program testprog (see
// reeve.dev/reeve/internal/testimage/testprog for its behaviour) and
// serves them from an in-process registry, so that no test needs the
// internet.
//
//	testimage.RequireDocker(t)
//	reg := testimage.StartRegistry(t)
//	ref := reg.Push(t, "app/web", "v1", map[string]string{"/version": "v1"})
//	// ref == "127.0.0.1:PORT/app/web:v1"; the engine can pull it.
//
// The registry listens on 127.0.0.1, which dockerd treats as an insecure
// registry and pulls from over plain HTTP. This needs the engine to run
// on the same host (network namespace) as the test.
package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Registry is an in-process OCI registry (go-containerregistry's
// pkg/registry, blobs in memory) served on 127.0.0.1:<random port>.
type Registry struct {
	host string
	auth authn.Authenticator // authn.Anonymous, or the basic-auth credentials
}

// StartRegistry starts a registry without authentication. It is closed on
// t.Cleanup.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	return start(t, newHandler(), authn.Anonymous)
}

// StartRegistryWithAuth starts a registry that requires HTTP basic auth
// with user and pass on /v2/: a request without them or with wrong ones
// gets 401 with "WWW-Authenticate: Basic realm=...". Push uses the
// credentials. It is closed on t.Cleanup.
func StartRegistryWithAuth(t testing.TB, user, pass string) *Registry {
	t.Helper()
	h := newHandler()
	guarded := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		u, p, ok := req.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(pass)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="reeve-testimage"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		h.ServeHTTP(w, req)
	})
	return start(t, guarded, &authn.Basic{Username: user, Password: pass})
}

func newHandler() http.Handler {
	// The registry logs every request by default; tests do not need that.
	return registry.New(registry.Logger(log.New(io.Discard, "", 0)))
}

func start(t testing.TB, h http.Handler, auth authn.Authenticator) *Registry {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testimage: listen: %v", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &Registry{host: ln.Addr().String(), auth: auth}
}

// Host returns "127.0.0.1:PORT", the registry part of image references.
func (r *Registry) Host() string { return r.host }

// Push builds an image and pushes it as <host>/<repo>:<tag>, returning
// that reference ("127.0.0.1:PORT/repo:tag").
//
// The image is for linux/runtime.GOARCH (variant v7 on arm) with
// entrypoint ["/testprog"] and env PATH. Layer 1 holds /testprog (0755)
// and an empty /tmp (1777); layer 2, present when files is not empty,
// holds files: absolute path → content (mode 0644, parent directories
// created), e.g. {"/version": "v2"}, which testprog reports as its
// version. The image is reproducible: the same files give the same digest
// in one registry. Its config names the registry's address as its author
// (containers do not inherit that, unlike labels), so that images of two
// registries (tests running at once) never share an image ID: removing
// one test's image never finds it used by another test's container.
func (r *Registry) Push(t testing.TB, repo, tag string, files map[string]string) string {
	t.Helper()
	var layer []byte
	if len(files) > 0 {
		layer = filesTar(files)
	}
	return r.push(t, repo, tag, layer)
}

// Entry is one entry of the layer PushEntries adds to an image.
type Entry struct {
	// Name is the path in the image, such as "/assets/fw.bin" (a leading
	// "/" is optional). It is put in the layer as it is (without the
	// leading "/"), not cleaned: odd names are what some tests are after.
	Name string
	// Type is a tar type flag: tar.TypeReg (also for 0), tar.TypeDir,
	// tar.TypeSymlink, tar.TypeLink, tar.TypeFifo …
	Type byte
	// Mode is the permission bits (and setuid, setgid, sticky); 0 means
	// 0644 for a file or hard link (engines give the linked file the
	// mode of the link), 0755 for a directory, 0777 for a symlink.
	Mode int64
	// Content is a regular file's content.
	Content string
	// Linkname is the target of a symlink or hard link (for a hard link
	// a path in the image without the leading "/", as tar has it).
	Linkname string
}

// PushEntries is Push with a second layer of exactly entries, in their
// order, for images with symlinks, hard links, modes and names that Push
// cannot make. Parent directories not among the entries are added before
// them (mode 0755), so that every path has its directories in the layer.
// nil entries make an image with the program layer only.
func (r *Registry) PushEntries(t testing.TB, repo, tag string, entries []Entry) string {
	t.Helper()
	var layer []byte
	if len(entries) > 0 {
		b, err := entriesTar(entries)
		if err != nil {
			t.Fatalf("testimage: entries: %v", err)
		}
		layer = b
	}
	return r.push(t, repo, tag, layer)
}

// push pushes an image of the program layer and layer (an uncompressed
// tar; none if nil) as <host>/<repo>:<tag>.
func (r *Registry) push(t testing.TB, repo, tag string, layer []byte) string {
	t.Helper()
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Author:       "testimage " + r.host,
		OS:           "linux",
		Architecture: runtime.GOARCH,
		Variant:      variant(),
		Config: v1.Config{
			Entrypoint: []string{"/testprog"},
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
	})
	if err != nil {
		t.Fatalf("testimage: config: %v", err)
	}
	layers := []v1.Layer{programLayer(t)}
	if layer != nil {
		l, err := layerOf(layer)
		if err != nil {
			t.Fatalf("testimage: files layer: %v", err)
		}
		layers = append(layers, l)
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		t.Fatalf("testimage: layers: %v", err)
	}
	ref := r.host + "/" + repo + ":" + tag
	tagRef, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatalf("testimage: reference %q: %v", ref, err)
	}
	if err := remote.Write(tagRef, img, remote.WithAuth(r.auth), remote.WithContext(t.Context())); err != nil {
		t.Fatalf("testimage: push %s: %v", ref, err)
	}
	return ref
}

// Digest returns the digest ("sha256:...") of the manifest that ref, as
// returned by Push, points at; repo@digest pins it.
func (r *Registry) Digest(t testing.TB, ref string) string {
	t.Helper()
	parsed, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("testimage: reference %q: %v", ref, err)
	}
	desc, err := remote.Head(parsed, remote.WithAuth(r.auth))
	if err != nil {
		t.Fatalf("testimage: head %s: %v", ref, err)
	}
	return desc.Digest.String()
}

func variant() string {
	if runtime.GOARCH == "arm" {
		return "v7"
	}
	return ""
}

var (
	progLayerOnce sync.Once
	progLayer     v1.Layer
	progLayerErr  error
)

// programLayer returns the layer with /testprog, built once per process.
func programLayer(t testing.TB) v1.Layer {
	t.Helper()
	prog := Program(t)
	progLayerOnce.Do(func() {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777})
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "testprog", Mode: 0o755, Size: int64(len(prog))})
		tw.Write(prog)
		tw.Close()
		progLayer, progLayerErr = layerOf(buf.Bytes())
	})
	if progLayerErr != nil {
		t.Fatalf("testimage: program layer: %v", progLayerErr)
	}
	return progLayer
}

// filesTar returns an uncompressed tar of files, with their parent
// directories, in a fixed order.
func filesTar(files map[string]string) []byte {
	clean := map[string]string{} // path without leading "/" → content
	dirs := map[string]bool{}
	var paths []string
	for p, content := range files {
		p = strings.TrimPrefix(path.Clean("/"+p), "/")
		clean[p] = content
		paths = append(paths, p)
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var dirList []string
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList) // parents sort before their children
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirList {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755})
	}
	for _, p := range paths {
		content := clean[p]
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: 0o644, Size: int64(len(content))})
		io.WriteString(tw, content)
	}
	tw.Close()
	return buf.Bytes()
}

// entriesTar returns an uncompressed tar of entries in their order, after
// the parent directories that are not among them.
func entriesTar(entries []Entry) ([]byte, error) {
	listed := map[string]bool{}
	for _, e := range entries {
		if e.Type == tar.TypeDir {
			listed[strings.Trim(e.Name, "/")] = true
		}
	}
	var dirs []string
	seen := map[string]bool{}
	for _, e := range entries {
		for d := path.Dir(strings.Trim(e.Name, "/")); d != "." && d != "/"; d = path.Dir(d) {
			if !listed[d] && !seen[d] {
				seen[d] = true
				dirs = append(dirs, d)
			}
		}
	}
	sort.Strings(dirs) // parents sort before their children

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	for _, e := range entries {
		h := &tar.Header{
			Typeflag: e.Type,
			Name:     strings.TrimPrefix(e.Name, "/"),
			Mode:     e.Mode,
			Linkname: e.Linkname,
		}
		switch e.Type {
		case 0, tar.TypeReg, tar.TypeLink:
			if e.Type != tar.TypeLink {
				h.Typeflag = tar.TypeReg
				h.Size = int64(len(e.Content))
			}
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		case tar.TypeDir:
			if !strings.HasSuffix(h.Name, "/") {
				h.Name += "/"
			}
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		case tar.TypeSymlink:
			if h.Mode == 0 {
				h.Mode = 0o777
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", e.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.Content); err != nil {
				return nil, fmt.Errorf("%s: %w", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layerOf makes a gzip layer of an uncompressed tar, compressing once.
func layerOf(tarBytes []byte) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
}

var (
	programOnce sync.Once
	program     []byte
	programErr  error
)

// Program returns the testprog binary for linux/runtime.GOARCH, built with
// CGO_ENABLED=0 (static). It is built once per process and cached on disk
// under os.TempDir(), keyed by a hash of the source and Go version, so
// that other test processes reuse it.
func Program(t testing.TB) []byte {
	t.Helper()
	programOnce.Do(func() { program, programErr = buildProgram() })
	if programErr != nil {
		t.Fatalf("testimage: build testprog: %v", programErr)
	}
	return program
}

func buildProgram() ([]byte, error) {
	dir, err := programDir()
	if err != nil {
		return nil, err
	}
	src, err := os.ReadFile(filepath.Join(dir, "main.go"))
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", runtime.Version(), runtime.GOARCH)
	h.Write(src)
	cacheDir := filepath.Join(os.TempDir(), "reeve-testimage")
	cached := filepath.Join(cacheDir, "testprog-"+hex.EncodeToString(h.Sum(nil))[:16])
	if b, err := os.ReadFile(cached); err == nil && len(b) > 0 {
		return b, nil
	}

	// The disk cache is best effort: if its directory is not writable
	// (another user made it), build into a private temp dir.
	tmp, err := os.CreateTemp(cacheDir, "build-*")
	if err != nil {
		os.MkdirAll(cacheDir, 0o755)
		if tmp, err = os.CreateTemp(cacheDir, "build-*"); err != nil {
			if tmp, err = os.CreateTemp("", "reeve-testprog-*"); err != nil {
				return nil, err
			}
			cached = ""
		}
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", tmp.Name(), ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if runtime.GOARCH == "arm" {
		cmd.Env = append(cmd.Env, "GOARM=7")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build in %s: %v\n%s", dir, err, out)
	}
	b, err := os.ReadFile(tmp.Name())
	if err != nil {
		return nil, err
	}
	// Rename is atomic, so concurrent test processes see a whole file.
	if cached != "" {
		os.Rename(tmp.Name(), cached)
	}
	return b, nil
}

// programDir finds internal/testimage/testprog: from the module root
// (walking up from the working directory, which go test sets to the
// package's directory), else next to this source file.
func programDir() (string, error) {
	const rel = "internal/testimage/testprog"
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				if _, err := os.Stat(filepath.Join(d, rel, "main.go")); err == nil {
					return filepath.Join(d, rel), nil
				}
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		d := filepath.Join(filepath.Dir(file), "testprog")
		if _, err := os.Stat(filepath.Join(d, "main.go")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("cannot find " + rel + ": run the test inside the reeve module")
}

// RequireDocker skips the test unless a Docker engine answers GET /_ping
// within 2 s at $DOCKER_HOST (unix:// or tcp://) or else
// unix:///var/run/docker.sock. With CI=true it fails instead of skipping.
func RequireDocker(t testing.TB) {
	t.Helper()
	host, c, base, err := engine()
	if err == nil {
		err = ping(c, base)
	}
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but no Docker engine is reachable at %s (%v): start dockerd", host, err)
	}
	t.Skipf("no Docker engine reachable at %s (%v); start dockerd or set DOCKER_HOST to run this test", host, err)
}

func ping(c *http.Client, base string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /_ping: %s", resp.Status)
	}
	return nil
}

// engine returns the engine's address as configured, an HTTP client that
// reaches it and the base URL for requests.
func engine() (host string, c *http.Client, base string, err error) {
	host = os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil {
		return host, nil, "", err
	}
	switch u.Scheme {
	case "unix":
		sock := u.Path
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		return host, &http.Client{Transport: tr}, "http://docker", nil
	case "tcp", "http":
		return host, &http.Client{}, "http://" + u.Host, nil
	}
	return host, nil, "", fmt.Errorf("unsupported DOCKER_HOST scheme %q", u.Scheme)
}
