package dependent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/dependent"
)

// assetEnt is one tar entry of these tests.
type assetEnt struct {
	Name    string
	Type    byte
	Mode    int64
	Content string
	Link    string
}

// assetTar makes a tar of ents, in their order.
func assetTar(t *testing.T, ents ...assetEnt) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Link, ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Content))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar %s: %v", e.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			io.WriteString(tw, e.Content)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// assetRead lists the entries of a tar, in order.
func assetRead(t *testing.T, b []byte) []assetEnt {
	t.Helper()
	var out []assetEnt
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d:%d (%s:%s), want 0:0 without names", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		out = append(out, assetEnt{Name: h.Name, Type: h.Typeflag, Mode: h.Mode, Content: string(content), Link: h.Linkname})
	}
}

// hostileTar is a tar an image could hold under /assets, mixing what is
// fine with what must not get through.
func hostileTar(t *testing.T) []byte {
	return assetTar(t,
		assetEnt{Name: "./", Type: tar.TypeDir, Mode: 0o755},
		assetEnt{Name: "fw/", Type: tar.TypeDir, Mode: 0o755},
		assetEnt{Name: "fw/app.bin", Content: "APP", Mode: 0o4755},
		assetEnt{Name: "./fw/boot.bin", Content: "BOOT"},
		assetEnt{Name: "fw//odd name ü.bin", Content: "ODD"},
		assetEnt{Name: "locked/", Type: tar.TypeDir, Mode: 0o055},
		assetEnt{Name: "../x", Content: "escape"},
		assetEnt{Name: "/etc/passwd", Content: "root::0:0"},
		assetEnt{Name: "fw/../../y", Content: "escape"},
		assetEnt{Name: "up", Type: tar.TypeSymlink, Link: "../../etc"},
		assetEnt{Name: "abs", Type: tar.TypeSymlink, Link: "/etc"},
		assetEnt{Name: "fw/latest", Type: tar.TypeSymlink, Link: "app.bin"},
		assetEnt{Name: "fw/sub/deep", Type: tar.TypeSymlink, Link: "../../fw/app.bin"},
		assetEnt{Name: "fw/dangling", Type: tar.TypeSymlink, Link: "missing/file"},
		// a -> . is fine alone; b/c -> ../a/.. lexically is ".", but
		// through a it is the tree's parent.
		assetEnt{Name: "b/c", Type: tar.TypeSymlink, Link: "../a/.."},
		assetEnt{Name: "a", Type: tar.TypeSymlink, Link: "."},
		assetEnt{Name: "via-abs", Type: tar.TypeSymlink, Link: "abs/passwd"},
		assetEnt{Name: "loop1", Type: tar.TypeSymlink, Link: "loop2/x"},
		assetEnt{Name: "loop2", Type: tar.TypeSymlink, Link: "loop1/x"},
		// A file written through a symlink of the tar.
		assetEnt{Name: "evil", Type: tar.TypeSymlink, Link: "fw"},
		assetEnt{Name: "evil/x.bin", Content: "through a link"},
		// A symlink where a directory is.
		assetEnt{Name: "fw", Type: tar.TypeSymlink, Link: "."},
		assetEnt{Name: "fw/app-link", Type: tar.TypeLink, Link: "fw/app.bin"},
		assetEnt{Name: "hl-out", Type: tar.TypeLink, Link: "../../etc/shadow"},
		assetEnt{Name: "hl-abs", Type: tar.TypeLink, Link: "/etc/shadow"},
		assetEnt{Name: "hl-early", Type: tar.TypeLink, Link: "fw/later.bin"},
		assetEnt{Name: "fw/./boot.bin", Type: tar.TypeLink, Link: "fw/boot.bin"},
		assetEnt{Name: "fw/later.bin", Content: "LATER"},
		assetEnt{Name: "fifo", Type: tar.TypeFifo},
		assetEnt{Name: "dev/null", Type: tar.TypeChar},
		assetEnt{Name: "fw/app.bin/under-a-file", Content: "x"},
		assetEnt{Name: "fw/app.bin/link-under-a-file", Type: tar.TypeSymlink, Link: ".."},
	)
}

func TestSanitizeTarHostile(t *testing.T) {
	var out bytes.Buffer
	rep, err := dependent.SanitizeTar(bytes.NewReader(hostileTar(t)), &out, dependent.AssetLimits{})
	if err != nil {
		t.Fatalf("SanitizeTar: %v", err)
	}
	want := []assetEnt{
		{Name: "fw/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "fw/app.bin", Type: tar.TypeReg, Mode: 0o755, Content: "APP"},
		{Name: "fw/boot.bin", Type: tar.TypeReg, Mode: 0o644, Content: "BOOT"},
		{Name: "fw/odd name ü.bin", Type: tar.TypeReg, Mode: 0o644, Content: "ODD"},
		{Name: "locked/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "fw/app-link", Type: tar.TypeLink, Mode: 0o644, Link: "fw/app.bin"},
		{Name: "fw/later.bin", Type: tar.TypeReg, Mode: 0o644, Content: "LATER"},
		// symlinks last
		{Name: "fw/latest", Type: tar.TypeSymlink, Mode: 0o777, Link: "app.bin"},
		{Name: "fw/sub/deep", Type: tar.TypeSymlink, Mode: 0o777, Link: "../../fw/app.bin"},
		{Name: "fw/dangling", Type: tar.TypeSymlink, Mode: 0o777, Link: "missing/file"},
		{Name: "a", Type: tar.TypeSymlink, Mode: 0o777, Link: "."},
		{Name: "evil", Type: tar.TypeSymlink, Mode: 0o777, Link: "fw"},
	}
	if diff := cmp.Diff(want, assetRead(t, out.Bytes())); diff != "" {
		t.Errorf("sanitized tar (-want +got):\n%s", diff)
	}
	dropped := []string{"../x", "/etc/passwd", "fw/../../y", "up", "abs", "b/c", "via-abs", "loop1", "loop2",
		"evil/x.bin", "fw", "hl-out", "hl-abs", "hl-early", "fw/./boot.bin", "fifo", "dev/null", "fw/app.bin/under-a-file", "fw/app.bin/link-under-a-file"}
	if rep.Dropped != len(dropped) {
		t.Errorf("Dropped = %d, want %d: %q", rep.Dropped, len(dropped), rep.DroppedNames)
	}
	for _, name := range dropped {
		if !slices.ContainsFunc(rep.DroppedNames, func(s string) bool { return strings.HasPrefix(s, fmt.Sprintf("%q: ", name)) }) {
			t.Errorf("DroppedNames does not name %q: %q", name, rep.DroppedNames)
		}
	}
	t.Logf("dropped: %s", strings.Join(rep.DroppedNames, "; "))
	if rep.Entries != len(want) || rep.Bytes != int64(len("APPBOOTODDLATER")) {
		t.Errorf("report %+v, want %d entries, %d bytes", rep, len(want), len("APPBOOTODDLATER"))
	}
}

func TestSanitizeTarLimits(t *testing.T) {
	files := assetTar(t,
		assetEnt{Name: "a.bin", Content: strings.Repeat("a", 60)},
		assetEnt{Name: "b.bin", Content: strings.Repeat("b", 40)},
		assetEnt{Name: "../dropped.bin", Content: strings.Repeat("c", 1000)}, // dropped: does not count
	)
	if _, err := dependent.SanitizeTar(bytes.NewReader(files), io.Discard, dependent.AssetLimits{MaxBytes: 100}); err != nil {
		t.Errorf("100 bytes with a cap of 100: %v", err)
	}
	_, err := dependent.SanitizeTar(bytes.NewReader(files), io.Discard, dependent.AssetLimits{MaxBytes: 99})
	if reeve.ErrorCode(err) != reeve.CodeTooLarge {
		t.Errorf("100 bytes with a cap of 99: %v, want code %s", err, reeve.CodeTooLarge)
	}
	if _, err := dependent.SanitizeTar(bytes.NewReader(files), io.Discard, dependent.AssetLimits{MaxEntries: 3}); err != nil {
		t.Errorf("3 entries with a cap of 3: %v", err)
	}
	_, err = dependent.SanitizeTar(bytes.NewReader(files), io.Discard, dependent.AssetLimits{MaxEntries: 2})
	if reeve.ErrorCode(err) != reeve.CodeTooLarge {
		t.Errorf("3 entries with a cap of 2: %v, want code %s", err, reeve.CodeTooLarge)
	}
	// A huge file is refused from its header, before its bytes.
	huge := assetTar(t, assetEnt{Name: "huge.bin", Content: strings.Repeat("h", 1<<20)})
	var out bytes.Buffer
	_, err = dependent.SanitizeTar(bytes.NewReader(huge), &out, dependent.AssetLimits{MaxBytes: 1 << 10})
	if reeve.ErrorCode(err) != reeve.CodeTooLarge {
		t.Errorf("1 MiB file with a cap of 1 KiB: %v, want code %s", err, reeve.CodeTooLarge)
	}
	if out.Len() > 1<<10 {
		t.Errorf("%d bytes written before refusing", out.Len())
	}
	// Long names are dropped, not kept in memory.
	long := assetTar(t, assetEnt{Name: strings.Repeat("n", 2000), Content: "x"}, assetEnt{Name: "ok", Content: "y"})
	out.Reset()
	rep, err := dependent.SanitizeTar(bytes.NewReader(long), &out, dependent.AssetLimits{})
	if err != nil || rep.Dropped != 1 || rep.Entries != 1 {
		t.Errorf("long name: %+v, %v; want one dropped, one kept", rep, err)
	}
}

func TestSanitizeTarCorrupt(t *testing.T) {
	good := assetTar(t, assetEnt{Name: "a.bin", Content: strings.Repeat("a", 2000)}, assetEnt{Name: "b.bin", Content: "b"})
	// The end of the first entry's data (header, 2000 bytes, padding).
	boundary := 512 + 2048
	cases := map[string][]byte{
		"cut in a file":            good[:1000],
		"cut between entries":      good[:boundary],
		"cut before the end":       good[:len(good)-1024],
		"garbage":                  bytes.Repeat([]byte("not a tar "), 100),
		"empty":                    nil,
		"cut in the end marker":    good[:len(good)-1024+100],
		"header with a bad length": append(slices.Clone(good[:100]), bytes.Repeat([]byte{'x'}, 412)...),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := dependent.SanitizeTar(bytes.NewReader(b), io.Discard, dependent.AssetLimits{})
			if err == nil {
				t.Fatal("SanitizeTar succeeded, want an error")
			}
			t.Log(err)
		})
	}
	if _, err := dependent.SanitizeTar(bytes.NewReader(good), io.Discard, dependent.AssetLimits{}); err != nil {
		t.Errorf("the whole tar: %v", err)
	}
	// Record padding after the end marker (GNU tar) is fine.
	padded := append(slices.Clone(good), make([]byte, 10240-len(good)%10240)...)
	if _, err := dependent.SanitizeTar(bytes.NewReader(padded), io.Discard, dependent.AssetLimits{}); err != nil {
		t.Errorf("the tar padded to a record: %v", err)
	}
}

// assetExporter is an export function that counts its calls and writes a
// tar per image (from tars), optionally held until release is closed.
type assetExporter struct {
	calls   atomic.Int32
	tars    map[string][]byte
	release chan struct{} // nil: not held
	fail    map[string]error
}

func (e *assetExporter) export(ctx context.Context, image string, w io.Writer) error {
	e.calls.Add(1)
	if e.release != nil {
		select {
		case <-e.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := e.fail[image]; err != nil {
		if b := e.tars[image]; b != nil {
			w.Write(b[:len(b)/2]) // half a tar, then the error
		}
		return err
	}
	b, ok := e.tars[image]
	if !ok {
		return fmt.Errorf("image %s: %w", image, errAssetNoImage)
	}
	_, err := w.Write(b)
	return err
}

var errAssetNoImage = errors.New("no such image")

func assetCache(t *testing.T, dir string, ex *assetExporter) *dependent.AssetCache {
	c := dependent.NewAssetCache(dir, ex.export)
	c.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	return c
}

func assetFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func TestAssetCacheBuildsOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "assets")
	ex := &assetExporter{tars: map[string][]byte{"img:1": hostileTar(t)}, release: make(chan struct{})}
	c := assetCache(t, dir, ex)

	const n = 12
	paths := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { paths[i], errs[i] = c.Get(t.Context(), 7, "c1", "img:1") })
	}
	time.Sleep(100 * time.Millisecond) // let them all wait for the one build
	close(ex.release)
	wg.Wait()
	want := filepath.Join(dir, "7", "c1.tar")
	for i := range n {
		if errs[i] != nil || paths[i] != want {
			t.Errorf("Get #%d: %q, %v; want %q", i, paths[i], errs[i], want)
		}
	}
	if got := ex.calls.Load(); got != 1 {
		t.Errorf("export called %d times, want 1", got)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	var sanitized bytes.Buffer
	if _, err := dependent.SanitizeTar(bytes.NewReader(hostileTar(t)), &sanitized, dependent.AssetLimits{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, sanitized.Bytes()) {
		t.Errorf("the cached tar is not the sanitized export")
	}
	// Again: from the disk.
	if p, err := c.Get(t.Context(), 7, "c1", "img:1"); err != nil || p != want {
		t.Errorf("Get again: %q, %v", p, err)
	}
	if got := ex.calls.Load(); got != 1 {
		t.Errorf("export called %d times after a second Get, want 1", got)
	}
	f, err := c.Open(t.Context(), 7, "c1", "img:1")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer f.Close()
	if got, _ := io.ReadAll(f); !bytes.Equal(got, b) {
		t.Error("Open reads something else than the tar")
	}
	if files := assetFiles(t, dir); !slices.Equal(files, []string{filepath.Join("7", "c1.tar")}) {
		t.Errorf("files under the cache: %q", files)
	}
}

func TestAssetCacheNewCommitRemovesOld(t *testing.T) {
	dir := t.TempDir()
	ok := assetTar(t, assetEnt{Name: "fw.bin", Content: "v"})
	ex := &assetExporter{tars: map[string][]byte{"img:1": ok, "img:2": ok, "img:3": ok}}
	c := assetCache(t, dir, ex)
	ctx := t.Context()
	for _, k := range []struct {
		app    int64
		commit string
		image  string
	}{{7, "c1", "img:1"}, {8, "c1", "img:1"}} {
		if _, err := c.Get(ctx, k.app, k.commit, k.image); err != nil {
			t.Fatal(err)
		}
	}
	// What a crash left, and what is not the cache's.
	os.WriteFile(filepath.Join(dir, "7", ".c0.tar.tmp-123"), []byte("half"), 0o600)
	os.WriteFile(filepath.Join(dir, "7", "notes.txt"), []byte("mine"), 0o600)

	if _, err := c.Get(ctx, 7, "c2", "img:2"); err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join("7", "c2.tar"), filepath.Join("7", "notes.txt"), filepath.Join("8", "c1.tar")}
	if files := assetFiles(t, dir); !slices.Equal(files, want) {
		t.Errorf("files after a new commit of app 7: %q, want %q", files, want)
	}

	if err := c.RemoveApp(7); err != nil {
		t.Fatalf("RemoveApp: %v", err)
	}
	if files := assetFiles(t, dir); !slices.Equal(files, []string{filepath.Join("8", "c1.tar")}) {
		t.Errorf("files after RemoveApp(7): %q", files)
	}
	if err := c.RemoveApp(7); err != nil {
		t.Errorf("RemoveApp again: %v", err)
	}
	if err := c.RemoveApp(0); reeve.ErrorCode(err) != reeve.CodeInvalid {
		t.Errorf("RemoveApp(0): %v, want code invalid", err)
	}
}

func TestAssetCacheFailedBuildLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	small := assetTar(t, assetEnt{Name: "fw.bin", Content: strings.Repeat("f", 800)}, assetEnt{Name: "b.bin", Content: "b"})
	big := assetTar(t, assetEnt{Name: "fw.bin", Content: strings.Repeat("f", 5000)})
	boom := errors.New("engine went away")
	ex := &assetExporter{
		// half: cut in b.bin's header; cut: after fw.bin, no end marker.
		tars: map[string][]byte{"half": small, "big": big, "cut": small[:512+1024]},
		fail: map[string]error{"half": boom},
	}
	c := assetCache(t, dir, ex)
	c.Limits = dependent.AssetLimits{MaxBytes: 1000}
	ctx := t.Context()

	_, err := c.Get(ctx, 7, "half", "half")
	if !errors.Is(err, boom) {
		t.Errorf("export failing half way: %v, want it wrapped", err)
	}
	_, err = c.Get(ctx, 7, "big", "big")
	if reeve.ErrorCode(err) != reeve.CodeTooLarge {
		t.Errorf("a tar over the limit: %v, want code too_large", err)
	}
	_, err = c.Get(ctx, 7, "cut", "cut")
	if err == nil {
		t.Error("a tar cut short: no error")
	}
	_, err = c.Get(ctx, 7, "gone", "gone")
	if !errors.Is(err, errAssetNoImage) {
		t.Errorf("export of a missing image: %v, want its error wrapped", err)
	}
	if files := assetFiles(t, dir); len(files) != 0 {
		t.Errorf("failed builds left %q", files)
	}

	// Cancelled half way: nothing either.
	ex.release = make(chan struct{})
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := c.Get(cctx, 7, "c1", "big"); done <- err }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Get: %v, want context.Canceled", err)
	}
	if files := assetFiles(t, dir); len(files) != 0 {
		t.Errorf("a cancelled build left %q", files)
	}
}

// A build stops when the caller that runs it goes; a caller still waiting
// builds again.
func TestAssetCacheWaiterOutlivesBuilder(t *testing.T) {
	dir := t.TempDir()
	ex := &assetExporter{tars: map[string][]byte{"img": assetTar(t, assetEnt{Name: "fw.bin", Content: "v"})}, release: make(chan struct{})}
	c := assetCache(t, dir, ex)

	first, cancel := context.WithCancel(t.Context())
	firstDone := make(chan error, 1)
	go func() { _, err := c.Get(first, 7, "c1", "img"); firstDone <- err }()
	for ex.calls.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { _, err := c.Get(t.Context(), 7, "c1", "img"); second <- err }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Errorf("first Get: %v, want context.Canceled", err)
	}
	for ex.calls.Load() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	close(ex.release)
	if err := <-second; err != nil {
		t.Errorf("second Get: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "7", "c1.tar")); err != nil {
		t.Error(err)
	}
}

func TestAssetCacheRefusesBadKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "assets")
	ex := &assetExporter{tars: map[string][]byte{"img": assetTar(t, assetEnt{Name: "fw.bin", Content: "v"})}}
	c := assetCache(t, dir, ex)
	bad := []struct {
		app    int64
		commit string
	}{
		{0, "c1"}, {-1, "c1"},
		{7, ""}, {7, "."}, {7, ".."}, {7, ".hidden"}, {7, "../../etc/passwd"}, {7, "a/b"}, {7, `a\b`},
		{7, "with space"}, {7, "é"}, {7, "c1\x00"}, {7, strings.Repeat("a", 65)}, {7, "%2e%2e"},
	}
	for _, k := range bad {
		_, err := c.Get(t.Context(), k.app, k.commit, "img")
		if reeve.ErrorCode(err) != reeve.CodeInvalid {
			t.Errorf("Get(%d, %q): %v, want code invalid", k.app, k.commit, err)
		}
		if _, err := c.Open(t.Context(), k.app, k.commit, "img"); reeve.ErrorCode(err) != reeve.CodeInvalid {
			t.Errorf("Open(%d, %q): %v, want code invalid", k.app, k.commit, err)
		}
	}
	if _, err := c.Get(t.Context(), 7, "c1", ""); reeve.ErrorCode(err) != reeve.CodeInvalid {
		t.Errorf("Get without an image: %v, want code invalid", err)
	}
	if ex.calls.Load() != 0 {
		t.Errorf("export called %d times", ex.calls.Load())
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cache's directory was made: %v", err)
	}
	for _, good := range []string{"c1", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "v1.2-rc.3", "-x", "A.b-C"} {
		if err := dependent.CheckAssetKey(1, good); err != nil {
			t.Errorf("CheckAssetKey(1, %q): %v", good, err)
		}
	}
}
