package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// Fetch pulls an image, with the credentials of its registry if Options has
// them. progress (may be nil) gets the bytes downloaded over the bytes to
// download, summed over the layers the engine downloads; it ends with
// Current == Total, also when nothing had to be downloaded.
func (r *Runtime) Fetch(ctx context.Context, image string, progress func(runtime.Progress)) error {
	ref, err := reeve.NormalizeImage(image)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", image, err)
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", image, err)
	}
	host := reference.Domain(named)
	opts := client.ImagePullOptions{}
	if auth, ok := r.credentials(host); ok {
		b, err := json.Marshal(registry.AuthConfig{Username: auth.Username, Password: auth.Password, ServerAddress: host})
		if err != nil {
			return fmt.Errorf("fetch %s: encode credentials: %w", ref, err)
		}
		opts.RegistryAuth = base64.URLEncoding.EncodeToString(b)
	}
	what := fmt.Sprintf("fetch %s from registry %s", ref, host)

	resp, err := r.c.ImagePull(ctx, ref, opts)
	if err != nil {
		return r.wrap(err, "%s", what)
	}
	defer resp.Close()

	type layer struct{ cur, total int64 }
	layers := map[string]*layer{}
	var order []string
	sum := func() runtime.Progress {
		var p runtime.Progress
		for _, id := range order {
			p.Current += layers[id].cur
			p.Total += layers[id].total
		}
		return p
	}
	report := func(p runtime.Progress) {
		if progress != nil {
			progress(p)
		}
	}
	for msg, err := range resp.JSONMessages(ctx) {
		if err != nil {
			return r.wrap(err, "%s", what)
		}
		if msg.Error != nil {
			return fmt.Errorf("%s: %s", what, cleanMessage(msg.Error.Message))
		}
		if msg.ID == "" {
			continue
		}
		l := layers[msg.ID]
		switch msg.Status {
		case "Downloading":
			if msg.Progress == nil {
				continue
			}
			if l == nil {
				l = &layer{}
				layers[msg.ID] = l
				order = append(order, msg.ID)
			}
			l.cur = msg.Progress.Current
			if msg.Progress.Total > 0 {
				l.total = msg.Progress.Total
			}
		case "Verifying Checksum", "Download complete", "Extracting", "Pull complete":
			if l == nil || l.cur == l.total {
				continue
			}
			l.cur = l.total
		default:
			continue
		}
		report(sum())
	}
	final := sum()
	if final.Total == 0 {
		// Nothing was downloaded (the layers were there): the image's
		// size is what there was to fetch.
		if res, err := r.c.ImageInspect(ctx, ref); err == nil && res.Size > 0 {
			final.Total = res.Size
		}
	}
	final.Current = final.Total
	report(final)
	r.log.Debug("fetched image", "image", ref, "bytes", final.Total)
	return nil
}

// credentials returns the credentials for a registry host; Docker Hub is
// known under several names.
func (r *Runtime) credentials(host string) (runtime.Auth, bool) {
	if a, ok := r.creds[host]; ok {
		return a, true
	}
	if host == "docker.io" {
		for _, alias := range []string{"index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"} {
			if a, ok := r.creds[alias]; ok {
				return a, true
			}
		}
	}
	return runtime.Auth{}, false
}

// RemoveImage removes an image by reference (or ID). Removing a missing
// image is a no-op; an image a container uses is not removed (error).
func (r *Runtime) RemoveImage(ctx context.Context, image string) error {
	ref := image
	if !strings.HasPrefix(image, "sha256:") {
		n, err := reeve.NormalizeImage(image)
		if err != nil {
			return fmt.Errorf("remove image %s: %w", image, err)
		}
		ref = n
	}
	_, err := r.c.ImageRemove(ctx, ref, client.ImageRemoveOptions{PruneChildren: true})
	// The engine answers "unrecognized image ID" (500) when the image went
	// between resolving the reference and deleting it: it is gone.
	if isNotFound(err) || (err != nil && strings.Contains(err.Error(), "unrecognized image ID")) {
		return nil
	}
	return r.wrap(err, "remove image %s", ref)
}

// images lists the images on the engine with normalized references.
func (r *Runtime) images(ctx context.Context) ([]reeve.ImageState, map[string]map[string]string, error) {
	list, err := r.c.ImageList(ctx, client.ImageListOptions{})
	if err != nil {
		return nil, nil, r.wrap(err, "list images")
	}
	out := []reeve.ImageState{}
	labels := map[string]map[string]string{}
	for _, img := range list.Items {
		labels[img.ID] = img.Labels
		st := reeve.ImageState{ID: img.ID, Refs: []string{}}
		for _, ref := range append(append([]string{}, img.RepoTags...), img.RepoDigests...) {
			if strings.HasPrefix(ref, "<none>") {
				continue
			}
			n, err := reeve.NormalizeImage(ref)
			if err != nil {
				n = ref
			}
			st.Refs = append(st.Refs, n)
		}
		sort.Strings(st.Refs)
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, labels, nil
}

// Snapshot reads what reeve owns on the engine: its containers, networks
// and volumes (by label), and every image.
func (r *Runtime) Snapshot(ctx context.Context) (reeve.Snapshot, error) {
	images, imageLabels, err := r.images(ctx)
	if err != nil {
		return reeve.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	ctrs, err := r.containers(ctx, imageLabels)
	if err != nil {
		return reeve.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	nets, err := r.networks(ctx)
	if err != nil {
		return reeve.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	vols, err := r.volumes(ctx)
	if err != nil {
		return reeve.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	return reeve.Snapshot{Containers: ctrs, Networks: nets, Volumes: vols, Images: images}, nil
}
