package selfimage

import (
	"archive/tar"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func build(t *testing.T, cgo string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "prog")
	src := filepath.Join(t.TempDir(), "main.go")
	// A program that uses net, so that with cgo on it links dynamically.
	if err := os.WriteFile(src, []byte("package main\nimport \"net\"\nfunc main() { _, _ = net.LookupHost(\"localhost\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo, "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot build a test binary with CGO_ENABLED=%s: %v\n%s", cgo, err, b)
	}
	return out
}

func TestPushPacksTheBinary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := Serve(ln)
	defer srv.Close()
	bin := build(t, "0")
	ctx := context.Background()
	ref, err := Push(ctx, ln.Addr().String(), "reeve/test", bin, []string{"example-app", "worker"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := Push(ctx, ln.Addr().String(), "reeve/test", bin, []string{"example-app", "worker"})
	if err != nil || again != ref {
		t.Fatalf("the same binary gave %s then %s (%v)", ref, again, err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != goruntime.GOARCH || cf.Config.Entrypoint[0] != "/reeve" || cf.Config.Cmd[1] != "worker" {
		t.Fatalf("config %+v", cf)
	}
	want, _ := os.ReadFile(bin)
	tr := tar.NewReader(mutate.Extract(img))
	found := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		found[h.Name] = h.Size
	}
	if found["reeve"] != int64(len(want)) {
		t.Fatalf("image files %v, want reeve of %d bytes", found, len(want))
	}
	if _, ok := found["tmp"]; !ok {
		t.Fatalf("image files %v, want tmp", found)
	}
}

func TestPushRefusesDynamicBinary(t *testing.T) {
	bin := build(t, "1")
	b, _ := os.ReadFile(bin)
	if CheckStatic(b) == nil {
		t.Skip("the toolchain linked the cgo build statically; nothing to refuse")
	}
	_, err := Push(context.Background(), "127.0.0.1:1", "reeve/test", bin, nil)
	if err == nil {
		t.Fatal("a dynamically linked binary was pushed")
	}
}
