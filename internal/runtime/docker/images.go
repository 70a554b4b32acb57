package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// Fetch pulls an image, with the credentials of its registry if Options has
// them. progress (may be nil) gets the bytes downloaded over the bytes to
// download, summed over the layers the engine downloads (see pullProgress:
// the percentage never goes down, and stays below 100 while a layer's size
// is unknown; Current never exceeds Total); it ends with Current == Total,
// also when nothing had to be downloaded.
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
	if err := r.checkSpace(ctx, ref, host); err != nil {
		return err
	}

	resp, err := r.c.ImagePull(ctx, ref, opts)
	if err != nil {
		return r.wrap(err, "%s", what)
	}
	defer resp.Close()

	report := func(p runtime.Progress) {
		if progress != nil {
			progress(p)
		}
	}
	var pp pullProgress
	for msg, err := range resp.JSONMessages(ctx) {
		if err != nil {
			return r.wrap(err, "%s", what)
		}
		if msg.Error != nil {
			return fmt.Errorf("%s: %s", what, cleanMessage(msg.Error.Message))
		}
		if p, ok := pp.observe(msg); ok {
			report(p)
		}
	}
	var size int64
	if pp.total() == 0 {
		// Nothing was downloaded (the layers were there): the image's
		// size is what there was to fetch.
		if res, err := r.c.ImageInspect(ctx, ref); err == nil {
			size = res.Size
		}
	}
	final := pp.final(size)
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

// pullProgress sums the progress of a pull over its layers. Layers start
// one after the other and the engine tells a layer's size only once its
// download starts, so the sum alone would go backwards: a layer is counted
// from its first message ("Pulling fs layer", "Waiting"), the report stays
// at most 99 % while a layer's size is unknown, and the percentage reported
// never goes down.
type pullProgress struct {
	layers  map[string]*pullLayer
	order   []string
	lastPct int // percentage last reported
}

type pullLayer struct {
	cur, total int64
	known      bool // total is the layer's size
}

// sum adds up the layers; a layer of unknown size counts as big as what
// has arrived of it. all says every layer's size is known.
func (pp *pullProgress) sum() (p runtime.Progress, all bool) {
	all = true
	for _, id := range pp.order {
		l := pp.layers[id]
		if l.known {
			p.Current += min(l.cur, l.total)
			p.Total += l.total
		} else {
			p.Current += l.cur
			p.Total += l.cur
			all = false
		}
	}
	return p, all
}

func (pp *pullProgress) total() int64 {
	p, _ := pp.sum()
	return p.Total
}

func (pp *pullProgress) layer(id string) *pullLayer {
	if pp.layers == nil {
		pp.layers = map[string]*pullLayer{}
	}
	l := pp.layers[id]
	if l == nil {
		l = &pullLayer{}
		pp.layers[id] = l
		pp.order = append(pp.order, id)
	}
	return l
}

// observe takes one message of the pull and returns the progress to report,
// if there is news.
func (pp *pullProgress) observe(msg jsonstream.Message) (runtime.Progress, bool) {
	if msg.ID == "" {
		return runtime.Progress{}, false
	}
	switch msg.Status {
	case "Pulling fs layer", "Waiting":
		pp.layer(msg.ID)
		return runtime.Progress{}, false
	case "Downloading":
		if msg.Progress == nil {
			return runtime.Progress{}, false
		}
		l := pp.layer(msg.ID)
		l.cur = max(l.cur, msg.Progress.Current)
		if msg.Progress.Total > 0 {
			l.total, l.known = msg.Progress.Total, true
		}
	case "Verifying Checksum", "Download complete", "Extracting", "Pull complete":
		l := pp.layers[msg.ID]
		if l == nil || (l.known && l.cur >= l.total) {
			return runtime.Progress{}, false
		}
		if !l.known {
			l.total, l.known = l.cur, true
		}
		l.cur = l.total
	default:
		return runtime.Progress{}, false
	}
	p, all := pp.sum()
	if p.Total <= 0 {
		return runtime.Progress{}, false
	}
	pct := p.Percent()
	if !all && pct > 99 {
		pct = 99
	}
	pct = max(pct, pp.lastPct)
	pp.lastPct = pct
	// Current as close to the bytes as the percentage allows.
	if p.Percent() != pct {
		p.Current = min((int64(pct)*p.Total+99)/100, p.Total)
		if p.Percent() > pct {
			p.Current = int64(pct) * p.Total / 100
		}
	}
	return p, true
}

// final is the last report: everything done. size is what to report when
// nothing was downloaded.
func (pp *pullProgress) final(size int64) runtime.Progress {
	p, _ := pp.sum()
	if p.Total == 0 && size > 0 {
		p.Total = size
	}
	p.Current = p.Total
	return p
}
