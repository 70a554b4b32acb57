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
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// buildStatic builds a small static Go program (CGO_ENABLED=0).
func buildStatic(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "prog")
	src := filepath.Join(t.TempDir(), "main.go")
	if err := os.WriteFile(src, []byte("package main\nimport \"net\"\nfunc main() { _, _ = net.LookupHost(\"localhost\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build a static test binary: %v\n%s", err, b)
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
	bin := buildStatic(t)
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

// The system's own ls is dynamically linked on every Linux distribution
// reeve is built on (it needs libc's loader): the refusal must name the fix.
func TestPushRefusesDynamicBinary(t *testing.T) {
	bin, err := exec.LookPath("ls")
	if err != nil {
		t.Fatalf("no ls on PATH to use as a dynamically linked binary: %v", err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckStatic(b); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("CheckStatic(%s) = %v, want a refusal naming CGO_ENABLED=0", bin, err)
	}
	if _, err := Push(context.Background(), "127.0.0.1:1", "reeve/test", bin, nil); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("Push of a dynamically linked binary: %v", err)
	}
	static, err := os.ReadFile(buildStatic(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckStatic(static); err != nil {
		t.Fatalf("a CGO_ENABLED=0 build refused: %v", err)
	}
}
