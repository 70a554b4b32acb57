package docker

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// Create creates the service's container without starting it and returns
// its ID. A container of the same name (same service, commit, app and
// definition) is reused: Create is idempotent, also after a crash between
// creating the container and connecting its networks.
func (r *Runtime) Create(ctx context.Context, spec reeve.ServiceSpec) (string, error) {
	req, err := containerSpec(spec, r.prefix)
	if err != nil {
		return "", fmt.Errorf("create container for service %s of app %s: %w", spec.ServiceName, spec.AppUUID, err)
	}
	req.config.Labels[LabelManaged] = r.managed
	what := fmt.Sprintf("create container %s", req.name)

	for attempt := 0; ; attempt++ {
		if id, ok, err := r.existing(ctx, req, spec); err != nil || ok {
			return id, err
		}
		if req.serviceNetwork != "" {
			id, err := r.serviceContainer(ctx, spec.AppUUID, req.serviceNetwork, spec.Commit)
			if err != nil {
				return "", fmt.Errorf("%s: network_mode service:%s: %w", what, req.serviceNetwork, err)
			}
			req.host.NetworkMode = container.NetworkMode("container:" + id)
		}
		res, err := r.c.ContainerCreate(ctx, client.ContainerCreateOptions{
			Name:             req.name,
			Config:           req.config,
			HostConfig:       req.host,
			NetworkingConfig: req.networking,
		})
		if isConflict(err) && attempt == 0 {
			continue // created concurrently: reuse it
		}
		if err != nil {
			return "", r.wrap(err, "%s from %s", what, req.config.Image)
		}
		if err := r.connectNetworks(ctx, res.ID, req.connect); err != nil {
			// Leave nothing half made; the next Create starts afresh.
			_, _ = r.c.ContainerRemove(context.WithoutCancel(ctx), res.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			return "", fmt.Errorf("%s: %w", what, err)
		}
		return res.ID, nil
	}
}

// existing returns the ID of the container named req.name when it is the
// one spec describes, connecting networks a crash may have left out.
func (r *Runtime) existing(ctx context.Context, req *createRequest, spec reeve.ServiceSpec) (string, bool, error) {
	res, err := r.c.ContainerInspect(ctx, req.name, client.ContainerInspectOptions{})
	if isNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, r.wrap(err, "inspect container %s", req.name)
	}
	ctr := res.Container
	labels := map[string]string{}
	if ctr.Config != nil {
		labels = ctr.Config.Labels
	}
	if labels[LabelManaged] != r.managed || labels[LabelAppUUID] != spec.AppUUID ||
		labels[LabelConfigHash] != req.config.Labels[LabelConfigHash] {
		return "", false, fmt.Errorf("create container %s: a container of that name (%s) exists with another definition", req.name, shortID(ctr.ID))
	}
	missing := map[string]*network.EndpointSettings{}
	for name, ep := range req.connect {
		if ctr.NetworkSettings == nil || ctr.NetworkSettings.Networks[name] == nil {
			missing[name] = ep
		}
	}
	if err := r.connectNetworks(ctx, ctr.ID, missing); err != nil {
		return "", false, fmt.Errorf("create container %s: %w", req.name, err)
	}
	return ctr.ID, true, nil
}

// connectNetworks connects a created container to further networks, in name
// order.
func (r *Runtime) connectNetworks(ctx context.Context, id string, nets map[string]*network.EndpointSettings) error {
	names := make([]string, 0, len(nets))
	for n := range nets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		_, err := r.c.NetworkConnect(ctx, n, client.NetworkConnectOptions{Container: id, EndpointConfig: nets[n]})
		if err != nil {
			return r.wrap(err, "connect container %s to network %s", shortID(id), n)
		}
	}
	return nil
}

// serviceContainer returns the ID of the container of service in app whose
// network stack another service shares: the one of commit if there is one,
// else a running one, else the newest.
func (r *Runtime) serviceContainer(ctx context.Context, appUUID, service, commit string) (string, error) {
	list, err := r.c.ContainerList(ctx, client.ContainerListOptions{
		All: true,
		Filters: client.Filters{}.Add("label",
			LabelManaged+"="+r.managed, LabelAppUUID+"="+appUUID, LabelServiceName+"="+service),
	})
	if err != nil {
		return "", r.wrap(err, "list containers of service %s", service)
	}
	if len(list.Items) == 0 {
		return "", fmt.Errorf("service %s has no container in app %s: %w", service, appUUID, runtime.ErrNotFound)
	}
	cands := make([]candidate, 0, len(list.Items))
	for _, it := range list.Items {
		c := candidate{id: it.ID, running: it.State == container.StateRunning, created: time.Unix(it.Created, 0)}
		if len(it.Names) > 0 {
			c.name = it.Names[0]
		}
		cands = append(cands, c)
	}
	return current(cands, commit), nil
}

// candidate is a container of the service whose network stack another
// service shares.
type candidate struct {
	id, name string
	running  bool
	created  time.Time
}

// current returns the ID of the container of a service that a service of
// commit shares the network stack of: the one of commit if there is one,
// else a running one, else the newest.
func current(cands []candidate, commit string) string {
	rank := func(c candidate) int {
		n := 0
		if _, cm, _, ok := parseContainerName(c.name); ok && cm == commit {
			n += 2
		}
		if c.running {
			n++
		}
		return n
	}
	best := ""
	var bestC candidate
	for i, c := range cands {
		if i == 0 {
			best, bestC = c.id, c
			continue
		}
		rc, rb := rank(c), rank(bestC)
		if rc > rb || (rc == rb && c.created.After(bestC.created)) {
			best, bestC = c.id, c
		}
	}
	return best
}

// Start starts a created or stopped container; starting a running one is a
// no-op.
func (r *Runtime) Start(ctx context.Context, id string) error {
	_, err := r.c.ContainerStart(ctx, id, client.ContainerStartOptions{})
	if isNotFound(err) {
		// Not found may be the container whose network stack this one
		// shares (network_mode service:x): that is not ErrNotFound of
		// this container, which the caller would take as gone.
		if res, ierr := r.c.ContainerInspect(ctx, id, client.ContainerInspectOptions{}); ierr == nil {
			mode := ""
			if res.Container.HostConfig != nil {
				mode = string(res.Container.HostConfig.NetworkMode)
			}
			return fmt.Errorf("start container %s: it shares the network stack (%s) of a container that is gone; it must be recreated: %s",
				shortID(id), mode, cleanMessage(err.Error()))
		}
	}
	return r.wrap(err, "start container %s", shortID(id))
}

// Stop stops a container: SIGTERM (or the image's stop signal), then SIGKILL
// after grace; grace 0 uses the container's stop timeout (the service's
// stop_grace_period, else the engine's 10 s). Stopping a stopped or missing
// container is a no-op.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	opts := client.ContainerStopOptions{}
	if grace > 0 {
		secs := int((grace + time.Second - 1) / time.Second)
		opts.Timeout = &secs
	}
	_, err := r.c.ContainerStop(ctx, id, opts)
	if isNotFound(err) {
		return nil
	}
	return r.wrap(err, "stop container %s", shortID(id))
}

// Remove removes a container, killing it if it runs, with its anonymous
// volumes. Removing a missing container is a no-op.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	_, err := r.c.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if isNotFound(err) {
		return nil
	}
	return r.wrap(err, "remove container %s", shortID(id))
}

// UpdateMetadata moves a container to spec's commit by renaming it; the
// process is not touched. Labels are immutable, so the commit lives in the
// name. The container must already have spec's app, service and definition.
func (r *Runtime) UpdateMetadata(ctx context.Context, id string, spec reeve.ServiceSpec) error {
	res, err := r.c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return r.wrap(err, "update metadata of container %s", shortID(id))
	}
	ctr := res.Container
	var labels map[string]string
	if ctr.Config != nil {
		labels = ctr.Config.Labels
	}
	hash := spec.Service.ConfigHash()
	switch {
	case labels[LabelAppUUID] != spec.AppUUID, labels[LabelServiceName] != spec.ServiceName:
		return fmt.Errorf("update metadata of container %s: it belongs to service %s of app %s, not %s of %s",
			shortID(id), labels[LabelServiceName], labels[LabelAppUUID], spec.ServiceName, spec.AppUUID)
	case labels[LabelConfigHash] != hash:
		return fmt.Errorf("update metadata of container %s: its definition differs from the target's (config hash %s, target %s): it needs a new container",
			shortID(id), labels[LabelConfigHash], hash)
	}
	name := containerName(spec.ServiceName, spec.Commit, r.prefix+spec.AppUUID, hash)
	if "/"+name == ctr.Name || name == ctr.Name {
		return nil
	}
	if _, err := r.c.ContainerRename(ctx, ctr.ID, client.ContainerRenameOptions{NewName: name}); err != nil {
		return r.wrap(err, "rename container %s to %s", shortID(id), name)
	}
	return nil
}

// containers reads every container reeve owns.
func (r *Runtime) containers(ctx context.Context, imageLabels map[string]map[string]string) ([]reeve.ServiceState, error) {
	list, err := r.c.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: client.Filters{}.Add("label", LabelManaged+"="+r.managed),
	})
	if err != nil {
		return nil, r.wrap(err, "list containers")
	}
	out := []reeve.ServiceState{}
	var inspected []container.InspectResponse
	for _, s := range list.Items {
		res, err := r.c.ContainerInspect(ctx, s.ID, client.ContainerInspectOptions{})
		if isNotFound(err) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, r.wrap(err, "inspect container %s", shortID(s.ID))
		}
		inspected = append(inspected, res.Container)
	}
	for _, c := range inspected {
		st := serviceState(c, imageLabels[c.Image])
		if stale := staleNetworkContainer(c, inspected); stale != "" {
			// The config hash covers "service:x", not the container it
			// was resolved to: report the container changed so that
			// the planner recreates it on the current one.
			r.log.Debug("container shares the network stack of a container that is not its service's current one",
				"container", shortID(c.ID), "network_container", shortID(stale))
			st.ConfigHash = ""
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].ID < out[j].ID
		}
		return out[i].CreatedAt.Before(out[j].CreatedAt)
	})
	return out, nil
}

// staleNetworkContainer returns the container ID in c's network mode
// container:<id> when that container is gone or is not the current one of
// its service (see current) for c's commit; "" otherwise. all is every
// container reeve owns.
func staleNetworkContainer(c container.InspectResponse, all []container.InspectResponse) string {
	if c.HostConfig == nil {
		return ""
	}
	target, ok := strings.CutPrefix(string(c.HostConfig.NetworkMode), "container:")
	if !ok || target == "" {
		return ""
	}
	labels := func(x container.InspectResponse) map[string]string {
		if x.Config == nil {
			return nil
		}
		return x.Config.Labels
	}
	app := labels(c)[LabelAppUUID]
	service := ""
	for _, x := range all {
		if x.ID == target || strings.TrimPrefix(x.Name, "/") == target {
			if labels(x)[LabelAppUUID] == app {
				service = labels(x)[LabelServiceName]
			}
			target = x.ID
			break
		}
	}
	if service == "" {
		return target // gone, or not of this app
	}
	var cands []candidate
	for _, x := range all {
		if l := labels(x); l[LabelAppUUID] == app && l[LabelServiceName] == service {
			cands = append(cands, candidate{
				id: x.ID, name: x.Name, running: x.State != nil && x.State.Running, created: parseTime(x.Created),
			})
		}
	}
	_, commit, _, _ := parseContainerName(c.Name)
	if current(cands, commit) != target {
		return target
	}
	return ""
}

// serviceState reads a container's identity and state; imageLabels are the
// labels of its image, which the engine copies into the container's and
// which are not the release's.
func serviceState(c container.InspectResponse, imageLabels map[string]string) reeve.ServiceState {
	var labels map[string]string
	if c.Config != nil {
		labels = c.Config.Labels
	}
	st := reeve.ServiceState{
		ID:           c.ID,
		AppUUID:      labels[LabelAppUUID],
		ServiceName:  labels[LabelServiceName],
		Image:        labels[LabelImage],
		ConfigHash:   labels[LabelConfigHash],
		Networks:     splitList(labels[LabelNetworks]),
		Volumes:      splitList(labels[LabelVolumes]),
		RestartCount: c.RestartCount,
		CreatedAt:    parseTime(c.Created),
	}
	st.AppID, _ = strconv.ParseInt(labels[LabelAppID], 10, 64)
	if _, commit, _, ok := parseContainerName(c.Name); ok {
		st.Commit = commit
	}
	for k, v := range labels {
		if internalLabel(k) {
			continue
		}
		if iv, ok := imageLabels[k]; ok && iv == v {
			continue
		}
		if st.Labels == nil {
			st.Labels = map[string]string{}
		}
		st.Labels[k] = v
	}
	if s := c.State; s != nil {
		st.Status = string(s.Status)
		st.ExitCode = s.ExitCode
		st.StartedAt = parseTime(s.StartedAt)
		st.FinishedAt = parseTime(s.FinishedAt)
		if s.Health != nil && s.Health.Status != container.NoHealthcheck {
			st.Health = string(s.Health.Status)
		}
	}
	return st
}

// parseTime parses an engine timestamp; the engine's zero time
// ("0001-01-01T00:00:00Z") and "" give the zero time.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
