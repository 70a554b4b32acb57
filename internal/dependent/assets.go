package dependent

// Firmware assets. A dependent app's release is an image that carries the
// firmware of its microcontrollers under /assets; the gateway application
// gets it as a tar (GET /v1/dependent-apps/{appId}/assets/{commit}). The
// tar is built once per app and commit, from the runtime's export of the
// directory, passed through SanitizeTar (the image is anyone's: what it
// holds must not reach outside the tree where the gateway unpacks it, nor
// fill the disk), and kept as <dir>/<appID>/<commit>.tar.

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"reeve.dev/reeve"
)

// AssetsDir is the directory of a dependent app's image that holds its
// firmware.
const AssetsDir = "/assets"

// Default limits of SanitizeTar and AssetCache.
const (
	DefaultAssetMaxBytes   int64 = 1 << 30 // 1 GiB of file content
	DefaultAssetMaxEntries       = 10_000
)

// assetMaxName bounds an entry's name and link target, in bytes. With
// MaxEntries it bounds the memory SanitizeTar keeps (the names it wrote,
// the symlinks it holds back).
const assetMaxName = 1024

// assetMaxListed is how many dropped entries SanitizeReport names.
const assetMaxListed = 32

// AssetLimits bound what SanitizeTar copies, so that a hostile image
// cannot fill the disk. A tar over a limit is refused as a whole (an error
// with code reeve.CodeTooLarge): part of a firmware set is worse than none.
type AssetLimits struct {
	// MaxBytes bounds the total size of the regular files written.
	// 0: DefaultAssetMaxBytes.
	MaxBytes int64
	// MaxEntries bounds the entries read, kept or not. 0:
	// DefaultAssetMaxEntries.
	MaxEntries int
}

func (l AssetLimits) withDefaults() AssetLimits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultAssetMaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultAssetMaxEntries
	}
	return l
}

// SanitizeReport says what SanitizeTar did.
type SanitizeReport struct {
	Entries int   // entries written
	Bytes   int64 // bytes of regular files written
	Dropped int   // entries left out (the tar's root entry is not counted)
	// DroppedNames lists the first entries left out (at most 32), each
	// as "name: why".
	DroppedNames []string
}

func (r *SanitizeReport) drop(name, why string) {
	r.Dropped++
	if len(r.DroppedNames) < assetMaxListed {
		if len(name) > 128 {
			name = name[:128] + "…"
		}
		r.DroppedNames = append(r.DroppedNames, fmt.Sprintf("%q: %s", name, why))
	}
}

// SanitizeTar copies the tar r to w keeping only what is safe to unpack
// anywhere: regular files, directories, symlinks whose target stays inside
// the tree, and hard links to a regular file written before them.
//
// Names are cleaned (no leading "./", no "//", directories end in "/");
// the root entry ("./") is left out. Entries are dropped, and counted in
// the report, when their name is absolute, has a ".." element, is longer
// than 1024 bytes, or lies under a file or a symlink of the tar, when they
// are devices, fifos or other special files, when a hard link does not
// point at a regular file written before it, and when a symlink's target
// is absolute or leads outside the tree. A symlink is judged by resolving
// its target element by element against every symlink of the tar (so
// "a -> ." followed by "b/c -> ../a/.." is seen to escape), which is why
// symlinks are written last, after every other entry: the tar's order
// changes, its content does not.
//
// Headers are made afresh: mode bits beyond 0777 (setuid, setgid, sticky)
// are cleared, directories get u+rwx and files u+r so that they can be
// unpacked, owners are root (0:0, no names), modification times are kept,
// extended attributes and PAX records are not.
//
// A bad entry is skipped, not fatal: one odd path must not keep a device's
// firmware from it, and what is dropped is reported. A tar that cannot be
// read (corrupt, or cut short: ending without its end marker) fails, as
// does one over limits (reeve.CodeTooLarge): those are no firmware set to
// hand on. On an error, w holds part of a tar.
func SanitizeTar(r io.Reader, w io.Writer, limits AssetLimits) (SanitizeReport, error) {
	lim := limits.withDefaults()
	var rep SanitizeReport
	cr := &assetCounter{r: r}
	tr := tar.NewReader(cr)
	tw := tar.NewWriter(w)
	written := map[string]byte{} // name → tar.TypeReg or tar.TypeDir, parents included
	type heldLink struct {
		name, target string
		hdr          *tar.Header
	}
	var held []heldLink
	links := map[string]string{} // every symlink of the input with a clean name → its target
	read := 0
	for {
		before := cr.n
		hdr, err := tr.Next()
		if err == io.EOF {
			// Next read the last entry's padding (under a block) and
			// the end marker (at least a block of zeros).
			if cr.n-before < 512 {
				return rep, errors.New("read tar: it ends without its end marker: cut short")
			}
			break
		}
		if err != nil {
			return rep, fmt.Errorf("read tar: %w", err)
		}
		read++
		if read > lim.MaxEntries {
			return rep, reeve.Errorf(reeve.CodeTooLarge, "the tar has more than %d entries", lim.MaxEntries)
		}
		name, why := assetCleanName(hdr.Name)
		kind := hdr.Typeflag
		switch {
		case why != "":
		case name == "":
			// the root
		case assetUnderLink(name, links):
			why = "lies under a symlink"
		case kind == tar.TypeReg || kind == tar.TypeDir || kind == tar.TypeLink:
			if p, bad := assetUnderFile(name, written); bad {
				why = fmt.Sprintf("lies under the file %q", p)
			} else if k, ok := written[name]; ok && (k == tar.TypeDir) != (kind == tar.TypeDir) {
				why = "a file and a directory of that name"
			}
		case kind == tar.TypeSymlink:
		case kind == tar.TypeChar || kind == tar.TypeBlock || kind == tar.TypeFifo:
			why = "a device or fifo"
		default:
			why = fmt.Sprintf("an entry of type %q", kind)
		}
		if why == "" && name != "" {
			switch kind {
			case tar.TypeReg: // the reader makes the old TypeRegA TypeReg
				if rep.Bytes+hdr.Size > lim.MaxBytes {
					return rep, reeve.Errorf(reeve.CodeTooLarge, "the files of the tar are over %d bytes", lim.MaxBytes)
				}
				out := assetHeader(hdr, tar.TypeReg, name)
				out.Size = hdr.Size
				out.Mode |= 0o400
				if err := tw.WriteHeader(out); err != nil {
					return rep, fmt.Errorf("write tar: %w", err)
				}
				n, err := io.Copy(tw, tr)
				if err != nil {
					return rep, fmt.Errorf("copy %s: %w", name, err)
				}
				rep.Entries++
				rep.Bytes += n
				assetMark(written, name, tar.TypeReg)
			case tar.TypeDir:
				if _, ok := written[name]; ok {
					break // written, or implied by an entry below it
				}
				out := assetHeader(hdr, tar.TypeDir, name+"/")
				out.Mode |= 0o700
				if err := tw.WriteHeader(out); err != nil {
					return rep, fmt.Errorf("write tar: %w", err)
				}
				rep.Entries++
				assetMark(written, name, tar.TypeDir)
			case tar.TypeLink:
				target, twhy := assetCleanName(hdr.Linkname)
				if twhy != "" || target == "" || written[target] != tar.TypeReg {
					why = fmt.Sprintf("a hard link to %q, no file written before it", hdr.Linkname)
					break
				}
				if target == name {
					why = "a hard link to itself" // unpacking it could remove the file
					break
				}
				out := assetHeader(hdr, tar.TypeLink, name)
				out.Linkname = target
				out.Mode |= 0o400
				if err := tw.WriteHeader(out); err != nil {
					return rep, fmt.Errorf("write tar: %w", err)
				}
				rep.Entries++
				assetMark(written, name, tar.TypeReg)
			case tar.TypeSymlink:
				if _, ok := written[name]; ok {
					// Never written (see below), so no part of any
					// path: not one of links.
					why = "a symlink where a file or directory of the tar is"
					break
				}
				links[name] = hdr.Linkname
				switch {
				case hdr.Linkname == "":
					why = "a symlink to nothing"
				case len(hdr.Linkname) > assetMaxName:
					why = "a symlink with a target over 1024 bytes"
				case strings.HasPrefix(hdr.Linkname, "/"):
					why = fmt.Sprintf("a symlink to the absolute path %q", hdr.Linkname)
				default:
					held = append(held, heldLink{name: name, target: hdr.Linkname, hdr: hdr})
				}
			}
		}
		if why != "" {
			rep.drop(hdr.Name, why)
		}
		// Whatever was not copied is read, so that the end marker check
		// above counts only what Next reads.
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return rep, fmt.Errorf("read tar: %s: %w", hdr.Name, err)
		}
	}

	// Symlinks, now that every entry is known. A later symlink of the
	// same name replaces an earlier one, as unpacking would.
	last := map[string]int{}
	for i, l := range held {
		last[l.name] = i
	}
	for i, l := range held {
		if last[l.name] != i {
			continue
		}
		why := ""
		if _, ok := written[l.name]; ok {
			why = "a symlink where a file or directory of the tar is"
		} else if assetUnderLink(l.name, links) {
			why = "lies under a symlink"
		} else if p, bad := assetUnderFile(l.name, written); bad {
			why = fmt.Sprintf("lies under the file %q", p)
		} else if ok, w := assetLinkInside(l.name, links); !ok {
			why = fmt.Sprintf("a symlink to %q, %s", l.target, w)
		}
		if why != "" {
			rep.drop(l.hdr.Name, why)
			continue
		}
		out := assetHeader(l.hdr, tar.TypeSymlink, l.name)
		out.Linkname = l.target
		out.Mode = 0o777
		if err := tw.WriteHeader(out); err != nil {
			return rep, fmt.Errorf("write tar: %w", err)
		}
		rep.Entries++
	}
	if err := tw.Close(); err != nil {
		return rep, fmt.Errorf("write tar: %w", err)
	}
	return rep, nil
}

// assetHeader is a fresh header for an entry of the sanitized tar.
func assetHeader(hdr *tar.Header, kind byte, name string) *tar.Header {
	return &tar.Header{
		Typeflag: kind,
		Name:     name,
		Mode:     hdr.Mode & 0o777,
		ModTime:  hdr.ModTime,
	}
}

// assetCleanName returns the clean relative name of a tar entry ("" for
// the root), or why it is refused.
func assetCleanName(raw string) (name, why string) {
	switch {
	case raw == "":
		return "", "an empty name"
	case len(raw) > assetMaxName:
		return "", "a name over 1024 bytes"
	case strings.HasPrefix(raw, "/"):
		return "", "an absolute name"
	case strings.ContainsRune(raw, 0):
		return "", "a name with a NUL byte"
	}
	for _, el := range strings.Split(raw, "/") {
		if el == ".." {
			return "", "a name with .."
		}
	}
	name = path.Clean(raw)
	if name == "." {
		return "", ""
	}
	return name, ""
}

// assetMark records that name was written as kind, and its parents as
// directories (unpacking makes them).
func assetMark(written map[string]byte, name string, kind byte) {
	written[name] = kind
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		if _, ok := written[d]; ok {
			break
		}
		written[d] = tar.TypeDir
	}
}

// assetUnderFile reports whether a parent of name was written as a file.
func assetUnderFile(name string, written map[string]byte) (string, bool) {
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		if written[d] == tar.TypeReg {
			return d, true
		}
	}
	return "", false
}

// assetUnderLink reports whether a parent of name is a symlink of the tar:
// unpacking it would write through the link.
func assetUnderLink(name string, links map[string]string) bool {
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		if _, ok := links[d]; ok {
			return true
		}
	}
	return false
}

// assetLinkInside resolves the symlink name element by element, following
// every symlink of the tar on the way (links), and reports whether it
// stays inside the tree; if not, why. Elements that are no symlink count
// as directories, whether the tar has them or not (a missing one makes
// the link dangle, which is harmless).
func assetLinkInside(name string, links map[string]string) (bool, string) {
	dir := path.Dir(name)
	var stack []string
	if dir != "." {
		stack = strings.Split(dir, "/")
	}
	queue := strings.Split(links[name], "/")
	hops := 0
	for len(queue) > 0 {
		el := queue[0]
		queue = queue[1:]
		switch el {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return false, "which leads outside the tree"
			}
			stack = stack[:len(stack)-1]
			continue
		}
		stack = append(stack, el)
		target, ok := links[strings.Join(stack, "/")]
		if !ok {
			continue
		}
		if hops++; hops > 40 {
			return false, "which goes through too many symlinks"
		}
		if target == "" || strings.HasPrefix(target, "/") {
			return false, "which goes through a symlink to an absolute path"
		}
		stack = stack[:len(stack)-1]
		queue = append(strings.Split(target, "/"), queue...)
	}
	return true, ""
}

// assetCounter counts the bytes read through it.
type assetCounter struct {
	r io.Reader
	n int64
}

func (c *assetCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// AssetCache builds and keeps the firmware tars of dependent apps, one
// file per app and commit: <dir>/<appID>/<commit>.tar. It is safe for
// concurrent use; it starts no goroutine that outlives a call.
type AssetCache struct {
	// Limits bound each tar (see SanitizeTar). Set before the first Get.
	Limits AssetLimits
	// Logger hears of tars built and of entries left out of them. Nil:
	// slog.Default().
	Logger *slog.Logger
	// Keep, when set, names the commits of an app whose tars stay when
	// the tar of another is built (those its target still holds: devices
	// pinned to an older release). Nil: only the newest tar stays.
	Keep func(appID int64) map[string]bool

	dir    string
	export func(ctx context.Context, image string, w io.Writer) error

	mu     sync.Mutex // builds; and every rename or removal under dir
	builds map[assetKey]*assetBuild
}

type assetKey struct {
	app    int64
	commit string
}

// assetBuild is a build in progress; the callers that wait for it read
// path and err once done is closed.
type assetBuild struct {
	done chan struct{}
	path string
	err  error
	// gaveUp says the build stopped because the context of the caller
	// running it ended: a waiter whose context is still live builds
	// again.
	gaveUp bool
}

// NewAssetCache returns a cache keeping its tars under dir (created when
// needed). export writes a tar of the assets directory (AssetsDir) of an
// image on the device, such as
//
//	func(ctx context.Context, image string, w io.Writer) error {
//		return rt.ExportDir(ctx, image, dependent.AssetsDir, w)
//	}
func NewAssetCache(dir string, export func(ctx context.Context, image string, w io.Writer) error) *AssetCache {
	return &AssetCache{dir: dir, export: export, builds: map[assetKey]*assetBuild{}}
}

// CheckAssetKey checks an app ID and a commit as the route gets them:
// appID > 0; commit of letters, digits, '.' and '-', at most 64, not
// starting with '.'. The error has code reeve.CodeInvalid.
func CheckAssetKey(appID int64, commit string) error {
	if appID <= 0 {
		return reeve.Errorf(reeve.CodeInvalid, "dependent app id %d: must be positive", appID)
	}
	if commit == "" || len(commit) > 64 || commit[0] == '.' {
		return reeve.Errorf(reeve.CodeInvalid, "release commit %q: must be 1 to 64 letters, digits, '.' or '-', not starting with '.'", assetShort(commit))
	}
	for _, r := range commit {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return reeve.Errorf(reeve.CodeInvalid, "release commit %q: must be 1 to 64 letters, digits, '.' or '-', not starting with '.'", assetShort(commit))
		}
	}
	return nil
}

func assetShort(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

func (c *AssetCache) appDir(appID int64) string {
	return filepath.Join(c.dir, strconv.FormatInt(appID, 10))
}

func (c *AssetCache) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// Get returns the path of the firmware tar of app appID at commit, whose
// image (on the device) is image, building it first if it is not there:
// export, SanitizeTar, a temporary file, fsync, rename, so that a crash
// never leaves part of a tar under the final name. Callers asking for the
// same app and commit at once share one build, which runs in the first
// caller's goroutine: the others wait until it ends or their context
// does, and if it stopped because the first caller's context ended, one
// of them builds again. When a
// tar is built, the app's other tars (other commits) and temporary files
// a crash left are removed: a path Get returned earlier may go then, so
// open it at once, or use Open. appID and commit are checked
// (CheckAssetKey) before anything touches the disk. Errors of the export
// (such as the runtime's not found) are wrapped.
func (c *AssetCache) Get(ctx context.Context, appID int64, commit, image string) (string, error) {
	if err := CheckAssetKey(appID, commit); err != nil {
		return "", err
	}
	if image == "" {
		return "", reeve.Errorf(reeve.CodeInvalid, "dependent app %d commit %s: no image", appID, commit)
	}
	key := assetKey{appID, commit}
	final := filepath.Join(c.appDir(appID), commit+".tar")
	for {
		c.mu.Lock()
		if _, err := os.Stat(final); err == nil {
			c.mu.Unlock()
			return final, nil
		}
		b := c.builds[key]
		if b == nil {
			b = &assetBuild{done: make(chan struct{})}
			c.builds[key] = b
			c.mu.Unlock()
			err := c.build(ctx, key, image, final)
			c.mu.Lock()
			delete(c.builds, key)
			if err == nil {
				b.path = final
			} else {
				b.err = err
				b.gaveUp = ctx.Err() != nil
			}
			close(b.done)
			c.mu.Unlock()
			return b.path, b.err
		}
		c.mu.Unlock()
		select {
		case <-b.done:
			if b.gaveUp && ctx.Err() == nil {
				continue
			}
			return b.path, b.err
		case <-ctx.Done():
			return "", fmt.Errorf("firmware of dependent app %d commit %s: %w", appID, commit, ctx.Err())
		}
	}
}

// Open is Get, and opens the tar: an open file stays whole even if a
// build of another commit removes its name meanwhile.
func (c *AssetCache) Open(ctx context.Context, appID int64, commit, image string) (*os.File, error) {
	for attempt := 1; ; attempt++ {
		p, err := c.Get(ctx, appID, commit, image)
		if err != nil {
			return nil, err
		}
		c.mu.Lock() // no removal between the check and the open
		f, err := os.Open(p)
		c.mu.Unlock()
		if errors.Is(err, fs.ErrNotExist) && attempt < 3 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("firmware of dependent app %d commit %s: %w", appID, commit, err)
		}
		return f, nil
	}
}

// build writes the tar of key to final (see Get).
func (c *AssetCache) build(ctx context.Context, key assetKey, image, final string) (err error) {
	what := fmt.Sprintf("firmware of dependent app %d commit %s", key.app, key.commit)
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	assetSyncDir(c.dir) // the app's directory, if new
	tmp, err := os.CreateTemp(dir, "."+key.commit+".tar.tmp-*")
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	renamed := false
	defer func() {
		if !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	exported := make(chan error, 1)
	go func() {
		err := c.export(ectx, image, pw)
		pw.CloseWithError(err) // nil: io.EOF
		exported <- err
	}()
	bw := bufio.NewWriterSize(tmp, 256<<10)
	rep, serr := SanitizeTar(pr, bw, c.Limits)
	if serr == nil {
		serr = bw.Flush()
	}
	if serr == nil {
		// Padding after the end marker (tar pads to records) is let
		// through, within reason.
		io.CopyN(io.Discard, pr, 1<<20)
	}
	if serr != nil {
		cancel()
	}
	pr.CloseWithError(errors.New("firmware tar: reading stopped"))
	eerr := <-exported
	switch {
	case eerr != nil && (serr == nil || errors.Is(serr, eerr)):
		return fmt.Errorf("%s: %w", what, eerr)
	case serr != nil:
		return fmt.Errorf("%s: image %s: %w", what, image, serr)
	}
	if rep.Dropped > 0 {
		c.logger().Warn("entries left out of a firmware tar", "app", key.app, "commit", key.commit,
			"image", image, "dropped", rep.Dropped, "examples", rep.DroppedNames)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.Rename(tmp.Name(), final); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: the app's firmware was removed while it was built: %w", what, err)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	renamed = true
	assetSyncDir(dir)
	c.logger().Info("built firmware tar", "app", key.app, "commit", key.commit, "image", image,
		"entries", rep.Entries, "bytes", rep.Bytes)
	c.removeOthers(key, dir)
	return nil
}

// removeOthers removes the tars of the app's other commits, and the
// temporary files no build in progress writes (a crash left them). The
// caller holds c.mu.
func (c *AssetCache) removeOthers(key assetKey, dir string) {
	list, err := os.ReadDir(dir)
	if err != nil {
		c.logger().Warn("cannot list firmware tars", "dir", dir, "err", err)
		return
	}
	var keep map[string]bool
	if c.Keep != nil {
		keep = c.Keep(key.app)
	}
	for _, e := range list {
		name := e.Name()
		var commit string
		if i := strings.LastIndex(name, ".tar.tmp-"); strings.HasPrefix(name, ".") && i > 0 {
			commit = name[1:i]
			if k := (assetKey{key.app, commit}); k != key && c.builds[k] != nil {
				continue // being written
			}
		} else if strings.HasSuffix(name, ".tar") {
			commit = strings.TrimSuffix(name, ".tar")
			if commit == key.commit || keep[commit] {
				continue
			}
		} else {
			continue
		}
		if CheckAssetKey(key.app, commit) != nil {
			continue // not a name of ours
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.logger().Warn("cannot remove an old firmware tar", "file", filepath.Join(dir, name), "err", err)
		}
	}
}

// RemoveApp removes every tar of the app (its directory). A build of the
// app in progress then fails.
func (c *AssetCache) RemoveApp(appID int64) error {
	if appID <= 0 {
		return reeve.Errorf(reeve.CodeInvalid, "dependent app id %d: must be positive", appID)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.RemoveAll(c.appDir(appID)); err != nil {
		return fmt.Errorf("remove the firmware of dependent app %d: %w", appID, err)
	}
	return nil
}

// assetSyncDir makes a directory's entries durable, as far as the file
// system can (best effort: the files themselves are synced).
func assetSyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
