package gateway

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/localapi"
)

// FirmwareFileVar names, in a dependent app's config, the file of its
// release's /assets to install. Without it, the release must hold exactly
// one file (or one named firmware.bin).
const FirmwareFileVar = "REEVE_FIRMWARE_FILE"

// errBadFirmware is a release whose firmware cannot be installed as it is
// (no file to install, an unreadable tar): retrying will not help.
type errBadFirmware struct{ msg string }

func (e *errBadFirmware) Error() string { return e.msg }

// firmwareCache downloads each release's firmware once, from the agent,
// and keeps it extracted under dir/<appID>/<commit>/.
type firmwareCache struct {
	dir    string
	agent  *localapi.Client
	urlFor func(appID int64, commit, file string) string

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per app/commit: one download at a time
}

func newFirmwareCache(dir string, agent *localapi.Client, urlFor func(int64, string, string) string) *firmwareCache {
	return &firmwareCache{dir: dir, agent: agent, urlFor: urlFor, locks: map[string]*sync.Mutex{}}
}

func (c *firmwareCache) lock(key string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.locks[key]
	if !ok {
		l = &sync.Mutex{}
		c.locks[key] = l
	}
	return l
}

func (c *firmwareCache) releaseDir(appID int64, commit string) string {
	return filepath.Join(c.dir, strconv.FormatInt(appID, 10), commit)
}

// cached reports whether the release's firmware is here already.
func (c *firmwareCache) cached(appID int64, commit string) bool {
	_, err := os.Stat(c.releaseDir(appID, commit))
	return err == nil
}

// get returns the release's firmware, downloading and extracting it the
// first time. file is the app's FirmwareFileVar ("" when unset).
func (c *firmwareCache) get(ctx context.Context, appID int64, commit, file string) (driver.Firmware, error) {
	if commit == "" || strings.ContainsAny(commit, `/\`) || commit == "." || commit == ".." {
		return driver.Firmware{}, &errBadFirmware{fmt.Sprintf("release %q is not a commit", commit)}
	}
	l := c.lock(fmt.Sprintf("%d/%s", appID, commit))
	l.Lock()
	defer l.Unlock()
	dir := c.releaseDir(appID, commit)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := c.download(ctx, appID, commit, dir); err != nil {
			return driver.Firmware{}, err
		}
	}
	name, err := pickFile(dir, file)
	if err != nil {
		return driver.Firmware{}, &errBadFirmware{fmt.Sprintf("release %s: %v", commit, err)}
	}
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return driver.Firmware{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return driver.Firmware{}, err
	}
	return driver.Firmware{Commit: commit, Dir: dir, File: name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil)),
		URL: c.urlFor(appID, commit, name)}, nil
}

// download fetches the release's tar and extracts it into dir, whole or
// not at all.
func (c *firmwareCache) download(ctx context.Context, appID int64, commit, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+commit+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- extract(pr, tmp) }()
	err = c.agent.DependentAssets(ctx, appID, commit, pw)
	pw.CloseWithError(err)
	if xerr := <-done; err == nil && xerr != nil {
		err = &errBadFirmware{fmt.Sprintf("the firmware of release %s is not a readable tar: %v", commit, xerr)}
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// extract writes a tar's regular files and directories under dir; names
// that would leave it, links and special files are skipped (the agent
// already left them out).
func extract(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if name == "." || path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}

// pickFile chooses the file to install: the one named (must exist), else
// the only file, else firmware.bin.
func pickFile(dir, named string) (string, error) {
	if named != "" {
		clean := path.Clean(named)
		if path.IsAbs(clean) || strings.HasPrefix(clean, "..") {
			return "", fmt.Errorf("%s %q must be a path inside /assets", FirmwareFileVar, named)
		}
		if st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(clean))); err != nil || !st.Mode().IsRegular() {
			return "", fmt.Errorf("%s names %q, which /assets does not hold", FirmwareFileVar, named)
		}
		return clean, nil
	}
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	switch {
	case len(files) == 1:
		return files[0], nil
	case len(files) == 0:
		return "", errors.New("/assets holds no file to install")
	}
	for _, f := range files {
		if f == "firmware.bin" {
			return f, nil
		}
	}
	return "", fmt.Errorf("/assets holds %d files and none is firmware.bin: set %s in the app's config to the one to install", len(files), FirmwareFileVar)
}

// prune removes the releases of an app that no device needs.
func (c *firmwareCache) prune(appID int64, keep map[string]bool) {
	dir := filepath.Join(c.dir, strconv.FormatInt(appID, 10))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !keep[e.Name()] && !strings.HasPrefix(e.Name(), ".") {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// firmwarePath is the gateway's URL path of a release's file, served for
// devices that fetch their firmware themselves.
func firmwarePath(appID int64, commit, file string) string {
	return fmt.Sprintf("/v1/firmware/%d/%s/%s", appID, url.PathEscape(commit), file)
}
