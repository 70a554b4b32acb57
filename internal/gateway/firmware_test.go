package gateway

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"reeve.dev/reeve"
)

func tarOf(t *testing.T, entries map[string]string) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, body := range entries {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.WriteHeader(&tar.Header{Name: "link", Linkname: "/etc/passwd", Typeflag: tar.TypeSymlink})
	tw.Close()
	return &b
}

func TestExtractKeepsInsideAndPickFile(t *testing.T) {
	dir := t.TempDir()
	err := extract(tarOf(t, map[string]string{"fw/a.bin": "A", "../escape": "x", "/abs": "y", "notes.txt": "n"}), dir)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "fw/a.bin")); string(b) != "A" {
		t.Errorf("fw/a.bin = %q", b)
	}
	for _, p := range []string{filepath.Join(filepath.Dir(dir), "escape"), filepath.Join(dir, "abs"), filepath.Join(dir, "link")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s was written", p)
		}
	}
	// Two files, no firmware.bin: which one is not for the gateway to guess.
	if _, err := pickFile(dir, ""); err == nil || !strings.Contains(err.Error(), FirmwareFileVar) {
		t.Errorf("two files: %v, want an error naming %s", err, FirmwareFileVar)
	}
	if f, err := pickFile(dir, "fw/a.bin"); err != nil || f != "fw/a.bin" {
		t.Errorf("named: %q, %v", f, err)
	}
	for _, bad := range []string{"missing.bin", "../etc/passwd", "/etc/passwd"} {
		if _, err := pickFile(dir, bad); err == nil {
			t.Errorf("%s %q was taken", FirmwareFileVar, bad)
		}
	}
	empty := t.TempDir()
	if _, err := pickFile(empty, ""); err == nil {
		t.Error("an empty /assets was taken")
	}
	one := t.TempDir()
	os.WriteFile(filepath.Join(one, "image.hex"), []byte("x"), 0o644)
	if f, err := pickFile(one, ""); err != nil || f != "image.hex" {
		t.Errorf("the only file: %q, %v", f, err)
	}
	if err := extract(strings.NewReader("not a tar at all, clearly"), t.TempDir()); err == nil {
		t.Error("garbage was taken as a tar")
	}
}

func TestFailedStatusAndTransientErrors(t *testing.T) {
	long := strings.Repeat("é", 300)
	if s := failedStatus(long); len(s) > 256 || !strings.HasPrefix(s, "Update failed (") || !strings.HasSuffix(s, "…)") {
		t.Errorf("failedStatus of a long reason: %d bytes, %q", len(s), s)
	}
	if s := failedStatus("brown-out"); s != "Update failed (brown-out)" {
		t.Errorf("failedStatus = %q", s)
	}
	for err, want := range map[error]bool{
		reeve.Errorf(reeve.CodeUnavailable, "still downloading"): true,
		reeve.Errorf(reeve.CodeNotFound, "no release"):           false,
		reeve.Errorf(reeve.CodeInternal, "export failed"):        false,
		&errBadFirmware{"no file"}:                               false,
		errors.New("dial tcp: refused"):                          true,
		context.DeadlineExceeded:                                 false,
	} {
		if got := transient(err); got != want {
			t.Errorf("transient(%v) = %v, want %v", err, got, want)
		}
	}
}
