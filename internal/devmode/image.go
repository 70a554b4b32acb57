package devmode

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	goruntime "runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// pushSelfImage packs the running reeve binary as /reeve in a one-layer
// image and pushes it to the registry at host as reeve/example:<digest>.
func pushSelfImage(host string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the reeve binary: %w", err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		return "", fmt.Errorf("read the reeve binary: %w", err)
	}
	if err := checkStatic(bin); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "reeve", Mode: 0o755, Size: int64(len(bin)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}); err != nil {
		return "", err
	}
	if _, err := tw.Write(bin); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		return "", fmt.Errorf("pack the example image: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", fmt.Errorf("pack the example image: %w", err)
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
	cf.Config.Entrypoint = []string{"/reeve"}
	cf.Config.Env = []string{"PATH=/"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return "", fmt.Errorf("pack the example image: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return "", err
	}
	ref, err := name.ParseReference(fmt.Sprintf("%s/reeve/example:%s", host, digest.Hex[:12]), name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img); err != nil {
		return "", fmt.Errorf("push the example image to %s: %w", host, err)
	}
	return ref.String(), nil
}

// checkStatic refuses a dynamically linked binary: in an image with nothing
// else in it, it could not start.
func checkStatic(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("the reeve binary is not an ELF executable, so it cannot run in the example's container: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("this reeve binary is dynamically linked, so the example app built from it cannot start in a container: " +
				"build it with CGO_ENABLED=0 (CGO_ENABLED=0 go run ./cmd/reeve dev)")
		}
	}
	return nil
}
