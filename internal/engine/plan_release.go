package engine

import (
	"fmt"
	"time"

	"reeve.dev/reeve"
)

// releasePlan is the planning of one app that has a target release.
type releasePlan struct {
	*appPlan
	p      *planner
	app    reeve.App
	commit string
	rel    reeve.Release

	names     []string                        // target services, sorted
	svcs      map[string]*targetService       // by name
	byService map[string][]reeve.ServiceState // the app's containers by service, oldest first

	// imagesReady: every image of the release is on the device.
	imagesReady bool
	// fetchFailed: an image of the release is missing and its last
	// download failed.
	fetchFailed bool

	netReady map[string]bool // release networks that exist with their definition
	volReady map[string]bool // release volumes that exist with their definition

	// starts are the services that want to start, planned once every
	// service's kills are known (a dependency being killed does not count).
	starts []startIntent
}

type startIntent struct {
	ts        *targetService
	cur       *reeve.ServiceState
	replacing bool
}

// targetService is one service of the target release with what is derived
// from it once.
type targetService struct {
	name  string
	svc   reeve.Service
	hash  string
	image string // normalized
}

// spec is the service as the runtime creates it; the executor adds
// ExtraEnv and ExtraMounts.
func (r *releasePlan) spec(ts *targetService) *reeve.ServiceSpec {
	return &reeve.ServiceSpec{
		AppUUID:     r.uuid,
		AppID:       r.app.ID,
		AppName:     r.app.Name,
		Commit:      r.commit,
		ReleaseID:   r.rel.ID,
		ServiceName: ts.name,
		Service:     ts.svc,
	}
}

// planRelease plans an app toward its target release.
func (p *planner) planRelease(a *appPlan, uuid string, app reeve.App, commit string, rel reeve.Release) {
	r := &releasePlan{
		appPlan:   a,
		p:         p,
		app:       app,
		commit:    commit,
		rel:       rel,
		names:     sortedKeys(rel.Services),
		svcs:      map[string]*targetService{},
		byService: map[string][]reeve.ServiceState{},
	}
	for _, n := range r.names {
		s := rel.Services[n]
		r.svcs[n] = &targetService{name: n, svc: s, hash: s.ConfigHash(), image: normImage(s.Image)}
	}
	cs := p.containers[uuid]
	for _, c := range cs {
		r.byService[c.ServiceName] = append(r.byService[c.ServiceName], c)
	}
	r.imagesReady = true
	for _, n := range r.names {
		img := r.svcs[n].image
		if !p.present[img] {
			r.imagesReady = false
			if _, ok := p.env.FetchFailed[img]; ok {
				r.fetchFailed = true
			}
		}
	}

	r.removeDead(cs)
	r.planNetworks(cs)
	r.planVolumes(cs)
	r.planRemovedServices(cs)
	r.planFetches()
	for _, n := range r.names {
		r.planService(r.svcs[n])
	}
	for _, st := range r.starts {
		r.planStart(st.ts, st.cur, st.replacing)
	}
}

// removeDead implements the dead-container rule: a dead container is removed,
// and so is a created (never started) container that does not match its
// target service. Neither runs, so neither needs a lock nor waits for
// images. Exited containers that do not match are left to the update flow
// (planOld), which kills them when their strategy says.
func (r *releasePlan) removeDead(cs []reeve.ServiceState) {
	for _, c := range cs {
		ts := r.svcs[c.ServiceName]
		if c.Status == reeve.StatusDead || (c.Status == reeve.StatusCreated && (ts == nil || c.ConfigHash != ts.hash)) {
			r.remove(c)
		}
	}
}

// planNetworks implements the network rule.
//
//   - A release network that does not exist is created; the services
//     attached to it start in a later batch, once the snapshot shows it.
//   - A network whose definition changed (ConfigHash differs) is replaced:
//     first every container of the app attached to it is killed (once every
//     image of the release is on the device, so that the running release
//     keeps running while the new one downloads), then, when none is left,
//     it is removed, and then created again. Each step waits for the
//     previous one to show in the snapshot.
//   - A network of the app that is no longer in the release is removed once
//     no container of the app is attached to it (those containers belong
//     to services whose definition changed or that are gone, and are killed
//     by the update flow).
func (r *releasePlan) planNetworks(cs []reeve.ServiceState) {
	r.netReady = map[string]bool{}
	cur := r.p.networks[r.uuid]
	for _, n := range sortedKeys(r.rel.Networks) {
		def := r.rel.Networks[n]
		st, ok := cur[n]
		switch {
		case !ok:
			r.safe = append(r.safe, Step{Action: ActionCreateNetwork, AppUUID: r.uuid,
				Network: &reeve.NetworkSpec{AppUUID: r.uuid, Name: n, Network: def}})
		case st.ConfigHash == def.ConfigHash():
			r.netReady[n] = true
		default:
			users := attachedTo(cs, n)
			if len(users) == 0 {
				r.safe = append(r.safe, removeNetworkStep(r.uuid, n))
				continue
			}
			if r.imagesReady {
				for _, c := range users {
					r.killOrWait(c)
				}
			}
		}
	}
	for _, n := range sortedKeys(cur) {
		if _, ok := r.rel.Networks[n]; !ok && len(attachedTo(cs, n)) == 0 {
			r.safe = append(r.safe, removeNetworkStep(r.uuid, n))
		}
	}
}

// planVolumes implements the volume rule.
//
//   - A release volume that does not exist is created; the services using it
//     start in a later batch.
//   - A volume whose definition changed is given its new definition with
//     its data kept (createVolume with Replace): first every container of
//     the app using it is killed (once every image of the release is on the
//     device), then, when none is left, the volume is replaced.
//   - Volumes are never removed by the planner. A volume that left the
//     release, or whose app left the target, is kept with its data: data is
//     only removed on an explicit request, outside the planner.
//     ActionRemoveVolume stays available to the executor for that, but no
//     rule here emits it.
func (r *releasePlan) planVolumes(cs []reeve.ServiceState) {
	r.volReady = map[string]bool{}
	cur := r.p.volumes[r.uuid]
	for _, n := range sortedKeys(r.rel.Volumes) {
		def := r.rel.Volumes[n]
		st, ok := cur[n]
		spec := &reeve.VolumeSpec{AppUUID: r.uuid, Name: n, Volume: def}
		switch {
		case !ok:
			r.safe = append(r.safe, Step{Action: ActionCreateVolume, AppUUID: r.uuid, Volume: spec})
		case st.ConfigHash == def.ConfigHash():
			r.volReady[n] = true
		default:
			users := usingVolume(cs, n)
			if len(users) == 0 {
				r.safe = append(r.safe, Step{Action: ActionCreateVolume, AppUUID: r.uuid, Volume: spec, Replace: true})
				continue
			}
			if r.imagesReady {
				for _, c := range users {
					r.killOrWait(c)
				}
			}
		}
	}
}

// killOrWait kills a container that has to go whatever its service's
// strategy (its network or volume is replaced), unless it is already
// handled or on its way out.
func (r *releasePlan) killOrWait(c reeve.ServiceState) {
	if r.handled[c.ID] {
		return
	}
	if c.Status == reeve.StatusRemoving {
		r.wait(c.ServiceName, fmt.Sprintf("waiting for the old container of %s to be removed", c.ServiceName))
		return
	}
	r.kill(c)
}

// planRemovedServices implements the removed-service rule: a container of a
// service that is no longer in the release is killed, once every image of the
// release is on the device (the running release keeps running until the new
// one can start).
func (r *releasePlan) planRemovedServices(cs []reeve.ServiceState) {
	for _, c := range cs {
		if _, ok := r.svcs[c.ServiceName]; ok || r.handled[c.ID] {
			continue
		}
		if r.imagesReady {
			r.killOrWait(c)
		}
	}
}

// planFetches implements the fetch rule: every image of the release that is
// not on the device is fetched, once per image, by the first service (in
// name order) that needs it; services with running false need their image
// too. An image being downloaded (env.InFlight) is not fetched again: the
// app waits with "downloading <image>". An image whose last download failed
// (env.FetchFailed) is fetched again; the caller's backoff spaces the
// retries.
//
// delete-then-download changes the order for its service: the old container
// goes first (planOld kills it), then the unused images the agent fetched are
// removed to make room, and only then is the new image fetched. The planner
// reads no memory of what it did, so "the old image" is, once its container
// is gone, any image in env.OwnedImages that no container and no target
// service uses. When the release's images cannot be fetched (fetchFailed),
// the old container is kept and the image is fetched anyway, so that a
// release that cannot be downloaded never takes the running one down.
func (r *releasePlan) planFetches() {
	type need struct {
		image, first string
		waitFor      string // set: do not fetch yet, say why
		makeRoom     bool   // remove unused images first
	}
	var order []*need
	needs := map[string]*need{}
	for _, name := range r.names {
		ts := r.svcs[name]
		if r.p.present[ts.image] {
			continue
		}
		nd := needs[ts.image]
		if nd == nil {
			nd = &need{image: ts.image, first: name}
			needs[ts.image] = nd
			order = append(order, nd)
		}
		if ts.svc.Strategy() != reeve.StrategyDeleteThenDownload {
			continue
		}
		switch {
		case r.hasOld(ts) && !r.fetchFailed:
			nd.waitFor = fmt.Sprintf("waiting for the old %s to be removed before downloading %s", name, ts.image)
		case len(r.p.garbage) > 0:
			nd.makeRoom = true
		}
	}
	for _, nd := range order {
		switch {
		case r.p.env.InFlight[nd.image]:
			r.wait(nd.first, "downloading "+nd.image)
		case nd.waitFor != "":
			r.wait(nd.first, nd.waitFor)
		case nd.makeRoom:
			// Removing an image that nothing uses interrupts nothing, so
			// it needs no lock.
			for _, ref := range r.p.garbage {
				r.safe = append(r.safe, Step{Action: ActionRemoveImage, AppUUID: r.uuid, Service: nd.first, Image: ref})
			}
			r.wait(nd.first, "removing unused images before downloading "+nd.image)
		default:
			r.fetch = append(r.fetch, Step{Action: ActionFetch, AppUUID: r.uuid, Service: nd.first, Image: nd.image})
		}
	}
}

// hasOld reports whether a container of the service that does not match
// its target is still there.
func (r *releasePlan) hasOld(ts *targetService) bool {
	for _, c := range r.byService[ts.name] {
		if c.ConfigHash != ts.hash {
			return true
		}
	}
	return false
}

// planService plans one target service's containers.
//
// Containers already handled in this batch (dead or never-started ones
// being removed, ones killed because their network or volume is replaced)
// and containers the runtime is removing keep the service waiting: nothing
// else is done for it until they are gone, so that a batch never holds a
// kill and a start of one service, and a new container never starts next to
// an old one (except in a hand-over).
//
// Two or more containers of one service are an interrupted hand-over (or an
// interrupted update): see planDuplicates.
func (r *releasePlan) planService(ts *targetService) {
	var live []reeve.ServiceState
	busy := false
	for _, c := range r.byService[ts.name] {
		switch {
		case r.handled[c.ID]:
			busy = true
		case c.Status == reeve.StatusRemoving:
			busy = true
			r.wait(ts.name, fmt.Sprintf("waiting for the old container of %s to be removed", ts.name))
		default:
			live = append(live, c)
		}
	}
	if busy {
		// What is left will be killed next (two or more, or one that does
		// not match): keep the lock meanwhile.
		for _, c := range live {
			if len(live) > 1 || c.ConfigHash != ts.hash {
				r.midUpdate = true
			}
		}
		return
	}
	switch len(live) {
	case 0:
		// Rule: running=false and no container is converged; nothing is
		// created.
		if ts.svc.Running {
			r.wantStart(ts, nil, false)
		}
	case 1:
		if live[0].ConfigHash == ts.hash {
			r.planMatching(ts, live[0])
		} else {
			r.planOld(ts, live[0])
		}
	default:
		r.planDuplicates(ts, live)
	}
}

// planDuplicates implements the interrupted hand-over rule. Two containers of
// one service where the strategy is hand-over, the service should run, one
// matches the target and runs, and the other is old and runs, are a
// hand-over in progress (planHandover). Any other set of two or more keeps
// the newest (by CreatedAt, ties broken by ID) and kills the others; the one
// kept goes through the normal flow in the next batch.
func (r *releasePlan) planDuplicates(ts *targetService, live []reeve.ServiceState) {
	if len(live) == 2 && ts.svc.Running && ts.svc.Strategy() == reeve.StrategyHandOver {
		a, b := live[0], live[1]
		if b.ConfigHash == ts.hash {
			a, b = b, a
		}
		if a.ConfigHash == ts.hash && b.ConfigHash != ts.hash && a.IsRunning() && b.IsRunning() {
			r.planHandover(ts, b, a)
			return
		}
	}
	for _, c := range live[:len(live)-1] {
		r.kill(c)
	}
}

// planHandover implements the second half of the hand-over strategy: the new
// container runs next to the old one. While it is running, a handover step
// tells the executor to wait for it to signal that it has taken over (or for
// the deadline: its start plus the service's hand-over timeout) and then to
// kill the old one. When the signal is already there
// (env.HandoverDone["<app>/<service>"]) or the deadline has passed, the old
// container is killed directly.
func (r *releasePlan) planHandover(ts *targetService, old, nw reeve.ServiceState) {
	// From creation, not start: the engine moves StartedAt on every
	// restart, and a new container that crash-loops must not hold the
	// hand-over (and the app's lock) for ever.
	deadline := nw.CreatedAt.Add(ts.svc.HandoverTimeout())
	switch {
	case r.p.env.HandoverDone[r.uuid+"/"+ts.name] || r.p.env.Now.After(deadline):
		// The new container has taken over, or had its time whatever its
		// state (as any other strategy would end with the new release
		// running or failing): the hand-over ends by killing the old one.
		r.handled[old.ID] = true
		r.leaving[old.ID] = true
		r.destructive = append(r.destructive, Step{Action: ActionHandover, AppUUID: r.uuid, Service: ts.name,
			Current: ptr(old), Target: r.spec(ts), Deadline: deadline})
	case nw.Status == reeve.StatusRunning:
		// Both run; the plan waits (without blocking the loop or other
		// apps) for the signal or the deadline.
		r.handled[old.ID] = true
		r.midUpdate = true
		r.wait(ts.name, fmt.Sprintf("%s %s until the new one signals or %s", HandingOverPrefix, ts.name, deadline.UTC().Format(time.RFC3339)))
	default:
		r.midUpdate = true
		r.wait(ts.name, fmt.Sprintf("waiting for the new %s to run", ts.name))
	}
}

// planMatching handles the one container of a service that matches its
// target.
//
//   - Same configuration, new release: when only its commit differs it is
//     moved to the new release with updateMetadata: no kill, no restart.
//   - running=true: a container that was created but never started is
//     started. One that exited is started again only when its restart
//     policy is always or unless-stopped (docker's restart manager usually
//     does it first; after a manual stop it does not). With no or
//     on-failure, an exited container is a job that finished: converged.
//   - running=false: a running container is stopped (destructive); a
//     stopped one is converged.
func (r *releasePlan) planMatching(ts *targetService, c reeve.ServiceState) {
	if c.Commit != r.commit {
		r.handled[c.ID] = true
		r.safe = append(r.safe, Step{Action: ActionUpdateMetadata, AppUUID: r.uuid, Service: ts.name,
			Current: ptr(c), Target: r.spec(ts)})
		return
	}
	if !ts.svc.Running {
		if c.IsRunning() {
			r.handled[c.ID] = true
			r.leaving[c.ID] = true
			r.destructive = append(r.destructive, Step{Action: ActionStop, AppUUID: r.uuid, Service: ts.name, Current: ptr(c)})
		}
		return
	}
	switch c.Status {
	case reeve.StatusCreated:
		r.wantStart(ts, &c, false)
	case reeve.StatusExited:
		if p := ts.svc.Composition.RestartPolicy(); p == "always" || p == "unless-stopped" {
			r.wantStart(ts, &c, false)
		}
	}
}

// planOld implements the update strategies for the one container of a
// service that does not match its target.
//
//   - download-then-kill (the default): the old container keeps running
//     while any image of the release is missing; once all are there it is
//     killed, and the new one starts in a later batch (planStart, once the
//     old one is gone).
//   - kill-then-download: the old container is killed at once; the image
//     is fetched in the same batch; the new one starts when every image of
//     the release is there.
//   - delete-then-download: the old container is killed at once; once it
//     is gone, unused images are removed, then the new image is fetched
//     (planFetches); the new one starts when every image is there.
//   - hand-over: once every image of the release is there, the new
//     container starts while the old one keeps running (its name differs);
//     planHandover takes over from there. When the old container is not
//     running, or the service should not run, there is nothing to hand over
//     and the service is updated as download-then-kill.
//
// Whatever the strategy, an old container is never killed because of an
// image that cannot be fetched: while an image of the release is missing and
// its last download failed, kill-then-download and delete-then-download keep
// the old container too.
func (r *releasePlan) planOld(ts *targetService, c reeve.ServiceState) {
	switch ts.svc.Strategy() {
	case reeve.StrategyKillThenDownload, reeve.StrategyDeleteThenDownload:
		if !r.fetchFailed {
			r.kill(c)
		}
	case reeve.StrategyHandOver:
		if ts.svc.Running && c.IsRunning() {
			if r.imagesReady {
				r.wantStart(ts, nil, true)
			}
			return
		}
		fallthrough
	default:
		if r.imagesReady {
			r.kill(c)
		}
	}
}

// wantStart records that a service should start; planStart decides once
// every service has been looked at.
func (r *releasePlan) wantStart(ts *targetService, cur *reeve.ServiceState, replacing bool) {
	if cur != nil {
		c := *cur
		cur = &c
	}
	r.starts = append(r.starts, startIntent{ts, cur, replacing})
}

// planStart starts a service: its container cur when there is one (created
// or exited), else a new container from the target. replacing is set for a
// hand-over's new container, started next to the old one: that start is
// destructive (it needs the update lock).
//
// A start waits until
//
//   - every image of the app's release is on the device (a missing image
//     is fetched or downloading, which says why the app waits);
//   - every release network and volume the service uses exists with its
//     target definition, as the snapshot shows: a network or volume created
//     in this batch is used in the next one;
//   - every service it depends on (depends_on) has a container matching
//     its target that is running (service_started, the default), running
//     and healthy (service_healthy), or exited with code 0
//     (service_completed_successfully). Otherwise the service waits with
//     "waiting for <dependency>".
func (r *releasePlan) planStart(ts *targetService, cur *reeve.ServiceState, replacing bool) {
	if !r.imagesReady {
		return
	}
	// A hand-over's start that waits keeps the lock it was taken for.
	r.midUpdate = r.midUpdate || replacing
	comp := ts.svc.Composition
	for _, n := range sortedKeys(comp.Networks) {
		if _, ok := r.rel.Networks[n]; ok && !r.netReady[n] {
			r.wait(ts.name, "waiting for network "+n)
			return
		}
	}
	for _, m := range comp.Volumes {
		if m.Type != reeve.MountVolume || m.Source == "" {
			continue
		}
		if _, ok := r.rel.Volumes[m.Source]; ok && !r.volReady[m.Source] {
			r.wait(ts.name, "waiting for volume "+m.Source)
			return
		}
	}
	for _, dep := range sortedKeys(comp.DependsOn) {
		if !r.dependencyMet(dep, comp.DependsOn[dep].Condition) {
			r.wait(ts.name, "waiting for "+dep)
			return
		}
	}
	st := Step{Action: ActionStart, AppUUID: r.uuid, Service: ts.name, Target: r.spec(ts), Current: cur}
	if cur != nil {
		r.handled[cur.ID] = true
	}
	if replacing {
		r.destructive = append(r.destructive, st)
	} else {
		r.safe = append(r.safe, st)
	}
}

// dependencyMet reports whether a container of service dep that matches its
// target meets the condition. A container that this batch kills, stops or
// removes does not count.
func (r *releasePlan) dependencyMet(dep, condition string) bool {
	ts := r.svcs[dep]
	if ts == nil {
		return true // validation refuses this; nothing to wait for
	}
	if !ts.svc.Running && condition != reeve.ConditionCompleted {
		// The dependency is meant to be stopped: there is nothing to wait
		// for, and waiting would be for ever.
		return true
	}
	for _, c := range r.byService[dep] {
		if r.leaving[c.ID] || c.ConfigHash != ts.hash {
			continue
		}
		switch condition {
		case reeve.ConditionHealthy:
			// A container with no healthcheck at all (none in the release
			// nor in its image) would never turn healthy: running is all
			// it can say.
			if c.Status == reeve.StatusRunning && (c.Health == reeve.HealthHealthy || c.Health == reeve.HealthNone) {
				return true
			}
		case reeve.ConditionCompleted:
			if c.Status == reeve.StatusExited && c.ExitCode == 0 {
				return true
			}
		default:
			if c.Status == reeve.StatusRunning {
				return true
			}
		}
	}
	return false
}
