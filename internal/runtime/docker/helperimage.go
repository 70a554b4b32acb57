package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	goruntime "runtime"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/client"
)

// HelperImage is the image helper containers are made from: reeve's own,
// one empty layer, loaded into the engine when it is missing (nothing to
// download). Helpers are never started, so it needs no program; made
// from anyone else's image, a helper would hold that image while it lives
// and its owner's removal of it would be refused.
const HelperImage = "reeve-volume-helper:1"

// helperImage returns the helper image, loading it first if the engine
// does not have it.
func (r *Runtime) helperImage(ctx context.Context) (string, error) {
	_, err := r.c.ImageInspect(ctx, HelperImage)
	if err == nil {
		return HelperImage, nil
	}
	if !cerrdefs.IsNotFound(err) {
		return "", r.wrap(err, "inspect the volume helper image")
	}
	archive, err := helperArchive()
	if err != nil {
		return "", fmt.Errorf("make the volume helper image: %w", err)
	}
	res, err := r.c.ImageLoad(ctx, bytes.NewReader(archive), client.ImageLoadWithQuiet(true))
	if err != nil {
		return "", r.wrap(err, "load the volume helper image")
	}
	defer res.Close()
	// The answer is a stream of JSON messages; a failure is one of them.
	dec := json.NewDecoder(res)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", r.wrap(err, "load the volume helper image")
		}
		if msg.Error != "" {
			return "", fmt.Errorf("load the volume helper image: %s", msg.Error)
		}
	}
	r.log.Info("loaded the volume helper image", "image", HelperImage)
	return HelperImage, nil
}

// helperArchive is the helper image as a docker-archive tar (docker load).
func helperArchive() ([]byte, error) {
	var layerTar bytes.Buffer
	if err := tar.NewWriter(&layerTar).Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromReader(bytes.NewReader(layerTar.Bytes()))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf := &v1.ConfigFile{OS: "linux", Architecture: goruntime.GOARCH, RootFS: v1.RootFS{Type: "layers"}}
	if goruntime.GOARCH == "arm" {
		cf.Variant = "v7"
	}
	old, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf.RootFS.DiffIDs = old.RootFS.DiffIDs
	cf.Config.Entrypoint = []string{"/reeve-helper-is-never-started"}
	cf.Config.Labels = map[string]string{LabelHelper: "true"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	tag, err := name.NewTag(HelperImage)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := tarball.Write(tag, img, &out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
