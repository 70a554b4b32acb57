package runtimetest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve/internal/runtime"
	"reeve.dev/reeve/internal/testimage"
)

// exportEntries is the image content testExportDir exports: /assets with
// files of several modes and sizes, odd names, links, and neighbours that
// must not come along.
func exportEntries() []testimage.Entry {
	big := make([]byte, 70_000) // several tar blocks and more than one read
	rand.Read(big)
	long := "assets/long/" + strings.Repeat("n", 150) + ".bin" // needs a PAX header
	return []testimage.Entry{
		{Name: "/assets", Type: tar.TypeDir, Mode: 0o755},
		{Name: "/assets/fw", Type: tar.TypeDir, Mode: 0o750},
		{Name: "/assets/fw/app.bin", Content: string(big)},
		{Name: "/assets/fw/app-copy.bin", Type: tar.TypeLink, Linkname: "assets/fw/app.bin"},
		{Name: "/assets/fw/flash.sh", Mode: 0o755, Content: "#!/bin/sh\necho flash\n"},
		{Name: "/assets/secret.key", Mode: 0o600, Content: "k3y"},
		{Name: "/assets/empty", Content: ""},
		{Name: "/assets/empty-dir", Type: tar.TypeDir, Mode: 0o700},
		{Name: "/assets/with space & ünïcödé.txt", Content: "odd name"},
		{Name: "/assets/-dash", Content: "dash"},
		{Name: "/assets/long", Type: tar.TypeDir, Mode: 0o755},
		{Name: "/" + long, Content: "long name"},
		{Name: "/assets/current", Type: tar.TypeSymlink, Linkname: "fw/app.bin"},
		{Name: "/assets/up", Type: tar.TypeSymlink, Linkname: "../../etc/passwd"},
		{Name: "/assets/abs", Type: tar.TypeSymlink, Linkname: "/etc/passwd"},
		{Name: "/assets-link", Type: tar.TypeSymlink, Linkname: "assets"},
		{Name: "/assets.txt", Content: "a neighbour, not exported"},
		{Name: "/etc/reeve-export-test", Content: "outside, not exported"},
	}
}

// exported is one entry of an export, as compared: a hard link counts as
// the file it links to (the engine may name either of two linked paths
// the link).
type exported struct {
	Type    byte
	Mode    int64 // permission bits, setuid, setgid, sticky
	Content string
	Link    string // symlink target
}

// wantExport is what exporting /assets of exportEntries gives.
func wantExport(entries []testimage.Entry) map[string]exported {
	out := map[string]exported{}
	for _, e := range entries {
		name := strings.TrimPrefix(e.Name, "/")
		if !strings.HasPrefix(name, "assets/") {
			continue
		}
		name = strings.TrimPrefix(name, "assets/")
		switch e.Type {
		case tar.TypeDir:
			out[name] = exported{Type: tar.TypeDir, Mode: e.Mode}
		case tar.TypeSymlink:
			out[name] = exported{Type: tar.TypeSymlink, Mode: 0o777, Link: e.Linkname}
		case tar.TypeLink:
			target := entries[slices.IndexFunc(entries, func(x testimage.Entry) bool { return x.Name == "/"+e.Linkname })]
			out[name] = exported{Type: tar.TypeReg, Mode: cmpOr(target.Mode, 0o644), Content: target.Content}
		default:
			out[name] = exported{Type: tar.TypeReg, Mode: cmpOr(e.Mode, 0o644), Content: e.Content}
		}
	}
	return out
}

func cmpOr(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

// readExport reads an export's tar, checking the names are relative.
func readExport(t *testing.T, b []byte) map[string]exported {
	t.Helper()
	out := map[string]exported{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("export is not a valid tar: %v", err)
		}
		name := hdr.Name
		if strings.HasPrefix(name, "/") || strings.HasPrefix(name, "./") || strings.HasPrefix(name, "assets/") ||
			name == "" || name == "." || name == "./" {
			t.Errorf("export has entry %q: names must be relative to the directory, without it", name)
		}
		if hdr.Typeflag == tar.TypeDir && !strings.HasSuffix(name, "/") {
			t.Errorf("directory entry %q does not end in /", name)
		}
		name = strings.TrimSuffix(name, "/")
		if _, dup := out[name]; dup {
			t.Errorf("export has %q twice", name)
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		e := exported{Type: hdr.Typeflag, Mode: hdr.Mode & 0o7777}
		switch hdr.Typeflag {
		case tar.TypeReg:
			e.Content = string(content)
		case tar.TypeSymlink:
			e.Link = hdr.Linkname
		case tar.TypeLink:
			target, ok := out[strings.TrimSuffix(hdr.Linkname, "/")]
			if !ok || target.Type != tar.TypeReg {
				t.Errorf("hard link %q points at %q, which is no earlier file of the export", name, hdr.Linkname)
			}
			e = exported{Type: tar.TypeReg, Mode: hdr.Mode & 0o7777, Content: target.Content}
		}
		out[name] = e
	}
	return out
}

// cancelWriter cancels a context at its first write, and takes every
// write.
type cancelWriter struct {
	cancel context.CancelFunc
	n      int
}

func (w *cancelWriter) Write(p []byte) (int, error) {
	w.cancel()
	w.n += len(p)
	return len(p), nil
}

func (s *suite) testExportDir(t *testing.T) {
	reg := testimage.StartRegistry(t)
	entries := exportEntries()
	image := reg.PushEntries(t, "reeve/rtt-export-"+s.run, "v1", entries)
	absent := reg.PushEntries(t, "reeve/rtt-export-absent-"+s.run, "v1", entries[:3])
	c := ctx(t)
	if err := s.rt.Fetch(c, image, nil); err != nil {
		t.Fatalf("Fetch(%s): %v", image, err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			c, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s.rt.RemoveImage(c, image)
		}
	})
	before := len(s.snapshot(t).Containers)
	want := wantExport(entries)

	export := func(c context.Context, dir string) ([]byte, error) {
		var buf bytes.Buffer
		err := s.rt.ExportDir(c, image, dir, &buf)
		return buf.Bytes(), err
	}
	for _, dir := range []string{"/assets", "/assets/", "/assets-link"} {
		b, err := export(c, dir)
		if err != nil {
			t.Fatalf("ExportDir(%s, %s): %v", image, dir, err)
		}
		if diff := cmp.Diff(want, readExport(t, b)); diff != "" {
			t.Errorf("ExportDir(%s, %s): entries (-want +got):\n%s", image, dir, diff)
		}
	}

	// At once, several of them.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() {
			b, err := export(c, "/assets/fw")
			if err == nil && len(b) == 0 {
				err = errors.New("empty export")
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Errorf("concurrent ExportDir: %v", err)
	}

	for _, dir := range []string{"/no-such-dir", "/assets/no/such", "/assets/secret.key"} {
		_, err := export(c, dir)
		t.Logf("ExportDir(%s): %v", dir, err)
		if !errors.Is(err, runtime.ErrNotFound) || errors.Is(err, runtime.ErrImageNotPresent) {
			t.Errorf("ExportDir(%s, %s): %v, want runtime.ErrNotFound, not ErrImageNotPresent (the image is there)", image, dir, err)
		} else if !strings.Contains(err.Error(), strings.TrimSuffix(dir, "/")) {
			t.Errorf("ExportDir(%s, %s): error %q does not name the directory", image, dir, err)
		}
	}
	if _, err := export(c, "assets"); err == nil {
		t.Errorf("ExportDir(%s, %q) of a relative path succeeded, want an error", image, "assets")
	}

	// An image not on the device is not downloaded.
	var buf bytes.Buffer
	err := s.rt.ExportDir(c, absent, "/assets", &buf)
	if !errors.Is(err, runtime.ErrNotFound) || !errors.Is(err, runtime.ErrImageNotPresent) {
		t.Errorf("ExportDir of an image not fetched: %v, want runtime.ErrNotFound and ErrImageNotPresent", err)
	}
	for _, img := range s.snapshot(t).Images {
		if slices.Contains(img.Refs, normalized(t, absent)) {
			t.Errorf("ExportDir of an image not fetched downloaded it")
			s.rt.RemoveImage(c, absent)
		}
	}

	// Cancelled while it writes: it stops, and cleans up.
	cc, cancel := context.WithCancel(c)
	defer cancel()
	cw := &cancelWriter{cancel: cancel}
	if err := s.rt.ExportDir(cc, image, "/assets", cw); err == nil {
		t.Logf("ExportDir cancelled at its first write still succeeded (%d bytes written)", cw.n)
	} else {
		t.Logf("ExportDir cancelled at its first write: %v", err)
	}

	// Nothing of the exports is left: no container holds the image.
	if n := len(s.snapshot(t).Containers); n != before {
		t.Errorf("Snapshot has %d containers after the exports, %d before", n, before)
	}
	if err := s.rt.RemoveImage(c, image); err != nil {
		t.Fatalf("RemoveImage after the exports: %v (something still uses the image?)", err)
	}
	removed = true
	for _, img := range s.snapshot(t).Images {
		if slices.Contains(img.Refs, normalized(t, image)) {
			t.Errorf("image %s still there after RemoveImage", image)
		}
	}
	if err := s.rt.ExportDir(c, image, "/assets", io.Discard); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("ExportDir of a removed image: %v, want runtime.ErrNotFound", err)
	}
}
