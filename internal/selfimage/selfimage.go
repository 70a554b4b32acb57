// Package selfimage packs the running reeve binary into a one-layer OCI
// image and serves it from a registry inside the process, so that `reeve
// dev` and `reeve bench` have an image to run with no internet.
package selfimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path"
	goruntime "runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Serve serves an in-memory OCI registry on ln until the returned server is
// shut down. An engine pulls from 127.0.0.0/8 registries over plain HTTP.
func Serve(ln net.Listener) *http.Server {
	srv := &http.Server{
		Handler:           registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	return srv
}

// CheckStatic refuses a binary that needs a dynamic loader: in an image with
// nothing else in it, it could not start.
func CheckStatic(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("the reeve binary is not a Linux executable, so it cannot run in a container: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("this reeve binary is dynamically linked, so it cannot run alone in a container: " +
				"build it with CGO_ENABLED=0 (CGO_ENABLED=0 go run ./cmd/reeve …)")
		}
	}
	return nil
}

// Push packs the binary at binPath as /reeve (entrypoint) with an empty
// /tmp, and cmd as the image's command, and pushes it to the registry at
// host as <repo>:<first 12 hex digits of its digest>. It returns the
// reference. The image is reproducible: the same binary gives the same tag.
func Push(ctx context.Context, host, repo, binPath string, cmd []string) (string, error) {
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return "", fmt.Errorf("read the reeve binary: %w", err)
	}
	if err := CheckStatic(bin); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Name: "tmp/", Mode: 0o1777, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
		return "", err
	}
	if err := tw.WriteHeader(&tar.Header{Name: "reeve", Mode: 0o755, Size: int64(len(bin)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
		return "", err
	}
	if _, err := tw.Write(bin); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	return pushLayer(ctx, host, repo, buf.Bytes(), func(c *v1.Config) {
		c.Entrypoint = []string{"/reeve"}
		c.Cmd = cmd
		c.Env = []string{"PATH=/"}
	})
}

// PushFiles pushes an image that holds only files (path in the image →
// content, mode 0644, parent directories made), such as a dependent app's
// firmware under /assets, to the registry at host as
// <repo>:<first 12 hex digits of its digest>, and returns the reference.
func PushFiles(ctx context.Context, host, repo string, files map[string][]byte) (string, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	clean := make(map[string][]byte, len(files))
	names := make([]string, 0, len(files))
	for name, body := range files {
		name = strings.TrimPrefix(path.Clean("/"+name), "/")
		clean[name] = body
		names = append(names, name)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	for _, name := range names {
		for d := path.Dir(name); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList) // parents before their children
	for _, d := range dirList {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
			return "", err
		}
	}
	for _, name := range names {
		body := clean[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return "", err
		}
		if _, err := tw.Write(body); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	return pushLayer(ctx, host, repo, buf.Bytes(), nil)
}

// pushLayer pushes an image of one layer (an uncompressed tar) for this
// machine's platform to the registry at host as <repo>:<first 12 hex
// digits of its digest>, with configure's changes to its config, and
// returns the reference.
func pushLayer(ctx context.Context, host, repo string, tarBytes []byte, configure func(*v1.Config)) (string, error) {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
	if err != nil {
		return "", fmt.Errorf("pack the image: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", fmt.Errorf("pack the image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", goruntime.GOARCH
	if goruntime.GOARCH == "arm" {
		cf.Variant = "v7"
	}
	if configure != nil {
		configure(&cf.Config)
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", fmt.Errorf("pack the image: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return "", err
	}
	ref, err := name.ParseReference(fmt.Sprintf("%s/%s:%s", host, repo, digest.Hex[:12]), name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("push the image to %s: %w", host, err)
	}
	return ref.String(), nil
}
