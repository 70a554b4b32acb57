package docker

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// ExportDir writes a tar of the directory dir of image to w, entries named
// relative to dir (see runtime.Runtime). Nothing is run and nothing is
// downloaded: a helper container is created from the image itself (never
// started, labelled like the helpers of a volume copy, so that Cleanup
// removes one a crash leaves behind), the archive API streams dir out of
// it, and the container is removed, also when ctx ends. While it streams,
// Cleanup waits (it would remove the container under the copy), and the
// image cannot be removed (the container uses it).
func (r *Runtime) ExportDir(ctx context.Context, image, dir string, w io.Writer) error {
	if !path.IsAbs(dir) {
		return fmt.Errorf("export %s of image %s: the directory must be an absolute path", dir, image)
	}
	dir = path.Clean(dir)
	if dir == "/" {
		return fmt.Errorf("export %s of image %s: exporting a whole image is not supported", dir, image)
	}
	ref := image
	if !strings.HasPrefix(image, "sha256:") {
		n, err := reeve.NormalizeImage(image)
		if err != nil {
			return fmt.Errorf("export %s of image %s: %w", dir, image, err)
		}
		ref = n
	}
	what := fmt.Sprintf("export %s of image %s", dir, ref)
	// Checked first, so that "not found" is about the image and not some
	// other part of the create.
	img, err := r.c.ImageInspect(ctx, ref)
	if isNotFound(err) {
		return fmt.Errorf("%s: %w (%w)", what, runtime.ErrImageNotPresent, runtime.ErrNotFound)
	}
	if err != nil {
		return r.wrap(err, "%s", what)
	}
	// A container inherits its image's labels: one of reeve's on the
	// image must not make the helper look like a service (Snapshot) or
	// another runtime's helper.
	labels := map[string]string{LabelHelper: "true", LabelHelperOwner: r.managed}
	if img.Config != nil {
		for k := range img.Config.Labels {
			if _, ok := labels[k]; !ok && strings.HasPrefix(k, "io.reeve.") {
				labels[k] = ""
			}
		}
	}

	// Cleanup removes helpers; not while an export uses one.
	mu := helperLock(r.managed)
	mu.RLock()
	defer mu.RUnlock()
	res, err := r.c.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config: &container.Config{
			Image:           ref,
			Entrypoint:      []string{"/reeve-helper-is-never-started"},
			Labels:          labels,
			NetworkDisabled: true,
		},
		HostConfig: &container.HostConfig{NetworkMode: "none"},
	})
	if err != nil {
		// The image can go between the check and the create: then the
		// engine says not found too.
		return r.wrap(err, "%s: create helper container", what)
	}
	id := res.ID
	defer r.removeHelper(ctx, id)

	src, err := r.exportSource(ctx, id, dir, what)
	if err != nil {
		return err
	}
	cp, err := r.c.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: src})
	if err != nil {
		return r.wrap(err, "%s: read %s", what, src)
	}
	defer cp.Content.Close()
	if !cp.Stat.Mode.IsDir() {
		return fmt.Errorf("%s: %s is not a directory in the image: %w", what, dir, runtime.ErrNotFound)
	}
	if err := relativeTar(cp.Content, w, path.Base(src)); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// exportSource returns the path in container id to read dir from: dir, or
// where it leads if it is a symlink (resolved by the engine, inside the
// container's file system). A dir that is not there is runtime.ErrNotFound.
func (r *Runtime) exportSource(ctx context.Context, id, dir, what string) (string, error) {
	src := dir
	for range 2 {
		st, err := r.c.ContainerStatPath(ctx, id, client.ContainerStatPathOptions{Path: src})
		if isNotFound(err) {
			return "", fmt.Errorf("%s: no such directory in the image: %w", what, runtime.ErrNotFound)
		}
		if err != nil {
			return "", r.wrap(err, "%s: stat %s", what, src)
		}
		switch {
		case st.Stat.Mode.IsDir():
			return src, nil
		case st.Stat.Mode&os.ModeSymlink != 0 && src == dir && path.IsAbs(st.Stat.LinkTarget):
			// LinkTarget is the link fully resolved in the container:
			// at most one more look.
			src = path.Clean(st.Stat.LinkTarget)
			if src == "/" {
				return "", fmt.Errorf("%s: it is a link to the image's root, not exported", what)
			}
		default:
			return "", fmt.Errorf("%s: %s is not a directory in the image: %w", what, dir, runtime.ErrNotFound)
		}
	}
	return "", fmt.Errorf("%s: %s is not a directory in the image: %w", what, dir, runtime.ErrNotFound)
}

// relativeTar copies the engine's tar of a directory, whose entries are
// named base/… (base the directory's base name, possibly after "./"), to w
// with names relative to the directory, leaving out the directory's own
// entry. Headers are made afresh from the fields that matter, so that no
// PAX record of an old name travels along. A stream that ends without the
// tar's end marker was cut short: an error, not a smaller tar.
func relativeTar(in io.Reader, w io.Writer, base string) error {
	cr := &countingReader{r: in}
	tr := tar.NewReader(cr)
	tw := tar.NewWriter(w)
	rel := func(name string) (string, bool) {
		name = strings.TrimPrefix(name, "./")
		switch {
		case name == base || name == base+"/":
			return "", true
		case strings.HasPrefix(name, base+"/"):
			return name[len(base)+1:], true
		}
		return "", false
	}
	for {
		before := cr.n
		hdr, err := tr.Next()
		if err == io.EOF {
			// Next read the last entry's padding (under a block) and
			// the end marker (at least a block of zeros).
			if cr.n-before < 512 {
				return errors.New("read archive: the engine's archive ends without its end marker: cut short")
			}
			break
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		name, ok := rel(hdr.Name)
		if !ok {
			return fmt.Errorf("read archive: entry %q is not under %s/", hdr.Name, base)
		}
		if name == "" {
			continue // the directory itself
		}
		out := &tar.Header{
			Typeflag: hdr.Typeflag,
			Name:     name,
			Linkname: hdr.Linkname,
			Size:     hdr.Size,
			Mode:     hdr.Mode,
			Uid:      hdr.Uid,
			Gid:      hdr.Gid,
			Uname:    hdr.Uname,
			Gname:    hdr.Gname,
			ModTime:  hdr.ModTime,
			Devmajor: hdr.Devmajor,
			Devminor: hdr.Devminor,
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if !strings.HasSuffix(out.Name, "/") {
				out.Name += "/"
			}
		case tar.TypeLink:
			link, ok := rel(hdr.Linkname)
			if !ok || link == "" {
				return fmt.Errorf("read archive: hard link %q points at %q, outside %s/", hdr.Name, hdr.Linkname, base)
			}
			out.Linkname = link
		}
		if err := tw.WriteHeader(out); err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("copy %s: %w", name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
