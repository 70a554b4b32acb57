package docker

import (
	"context"
	"errors"
	"fmt"
	goruntime "runtime"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"

	"reeve.dev/reeve/internal/runtime"
)

// checkSpace refuses a download that cannot fit on the engine's data disk,
// before anything of it is written: a disk filled by a half-downloaded
// image can stop the running release too. The size is the image's
// compressed size from its registry manifest, a lower bound of what it
// takes unpacked; reserve bytes are kept free beyond it. When the size or
// the free space cannot be known (a registry that will not say, an engine
// whose disk the agent cannot see), the download goes ahead and the engine
// has the last word.
func (r *Runtime) checkSpace(ctx context.Context, ref, host string) error {
	if r.reserve < 0 {
		return nil
	}
	if _, err := r.c.ImageInspect(ctx, ref); err == nil {
		return nil // already here: nothing to download
	}
	size, err := r.imageSize(ctx, ref, host)
	if err != nil {
		r.log.Debug("image size unknown: no space check", "image", ref, "err", err)
		return nil
	}
	info, err := r.c.Info(ctx, client.InfoOptions{})
	if err != nil || info.Info.DockerRootDir == "" {
		return nil
	}
	free, err := freeBytes(info.Info.DockerRootDir)
	if err != nil {
		r.log.Debug("engine disk not visible: no space check", "dir", info.Info.DockerRootDir, "err", err)
		return nil
	}
	if free < size+r.reserve {
		return fmt.Errorf("fetch %s: %w: it needs at least %s and the engine's disk (%s) has %s free, of which %s is kept spare; remove images or files no release needs",
			ref, runtime.ErrNoSpace, mib(size), info.Info.DockerRootDir, mib(free), mib(r.reserve))
	}
	return nil
}

// imageSize is the compressed size of the image for this platform: its
// layers and config, as its registry's manifest says.
func (r *Runtime) imageSize(ctx context.Context, ref, host string) (int64, error) {
	named, err := name.ParseReference(ref)
	if err != nil {
		return 0, err
	}
	auth := authn.Anonymous
	if a, ok := r.credentials(host); ok {
		auth = authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: a.Password})
	}
	platform := v1.Platform{OS: "linux", Architecture: goruntime.GOARCH}
	if goruntime.GOARCH == "arm" {
		platform.Variant = "v7"
	}
	img, err := remote.Image(named, remote.WithContext(ctx), remote.WithAuth(auth), remote.WithPlatform(platform))
	if err != nil {
		return 0, err
	}
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	size := m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	if size <= 0 {
		return 0, errors.New("the manifest gives no sizes")
	}
	return size, nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
