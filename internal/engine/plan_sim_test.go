package engine

import (
	"fmt"
	"maps"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"reeve.dev/reeve"
)

// The convergence property: from many random current states, and for
// several targets, planning and applying batches in a small in-memory world
// reaches nil within maxBatches, and the world then matches the target. The
// world checks every batch as it applies it (a start only with its image,
// networks, volumes and dependencies ready; a destructive step only under
// the agent's lock; no removed volume; ...), so a wrong step fails here even
// when the end state would be right. Everything is seeded: a failure
// reproduces with the seed it prints.

const maxBatches = 30

const labelJob = "sim.job" // a service whose process exits 0 on its own

// sim is a tiny world: a snapshot, the planner's env, and a clock.
type sim struct {
	t      *testing.T
	rng    *rand.Rand
	snap   reeve.Snapshot
	env    Env
	target reeve.DeviceTarget
	nextID int
	// downloading counts the ticks left for images in flight.
	downloading map[string]int
	// failedOnce holds images whose first download fails.
	failedOnce map[string]bool
	log        []string
}

// run plans and applies batches until the plan is nil.
func (s *sim) run() {
	s.t.Helper()
	for i := 0; i < maxBatches; i++ {
		steps := Plan(s.snap, s.target, s.env)
		s.log = append(s.log, fmt.Sprintf("batch %d: %v", i, steps))
		if steps == nil {
			if len(s.downloading) > 0 {
				s.fail("converged while downloads are in flight")
			}
			return
		}
		s.apply(steps)
		if s.t.Failed() {
			return
		}
		s.tick()
	}
	s.fail("not converged after %d batches", maxBatches)
}

func (s *sim) fail(format string, args ...any) {
	s.t.Helper()
	var cs []string
	for _, c := range s.snap.Containers {
		cs = append(cs, fmt.Sprintf("  %s %s/%s commit=%s hash=%.6s %s health=%q exit=%d nets=%v vols=%v",
			c.ID, c.AppUUID, c.ServiceName, c.Commit, c.ConfigHash, c.Status, c.Health, c.ExitCode, c.Networks, c.Volumes))
	}
	s.t.Errorf(format+"\n%s\ncontainers:\n%s", append(args, strings.Join(s.log, "\n"), strings.Join(cs, "\n"))...)
}

func (s *sim) find(id string) (int, bool) {
	for i, c := range s.snap.Containers {
		if c.ID == id {
			return i, true
		}
	}
	return -1, false
}

func (s *sim) present(snap reeve.Snapshot, image string) bool {
	for _, img := range snap.Images {
		if slices.Contains(img.Refs, image) {
			return true
		}
	}
	return false
}

func destructive(st Step) bool {
	switch st.Action {
	case ActionKill, ActionStop, ActionHandover, ActionRestart:
		return true
	case ActionStart:
		return st.Current == nil && st.Target.Service.Strategy() == reeve.StrategyHandOver
	}
	return false
}

// apply runs one batch. Preconditions are checked against the snapshot the
// batch was planned from: its steps run concurrently.
func (s *sim) apply(steps []Step) {
	s.t.Helper()
	before := cloneSnap(s.snap)
	failedBefore := maps.Clone(s.env.FetchFailed)
	checkBatch(s.t, before, s.target, steps)
	for _, st := range steps {
		lock := s.env.Locks[st.AppUUID]
		if destructive(st) && (!lock.HeldByAgent || lock.HeldByUser && !s.env.Force) {
			// A hand-over's start is only destructive when an old
			// container runs next to it.
			if st.Action != ActionStart || s.hasRunning(before, st.AppUUID, st.Service) {
				s.fail("%v without the app's lock", st)
			}
		}
		switch st.Action {
		case ActionFetch:
			s.fetch(st.Image)
		case ActionKill, ActionHandover:
			i, ok := s.find(st.Current.ID)
			if !ok {
				s.fail("%v: no such container", st)
				return
			}
			if st.Action == ActionKill {
				s.checkKeepsRelease(before, failedBefore, st)
			}
			if st.Action == ActionHandover {
				delete(s.env.HandoverDone, st.AppUUID+"/"+st.Service)
			}
			s.snap.Containers = slices.Delete(s.snap.Containers, i, i+1)
		case ActionStop:
			i, ok := s.find(st.Current.ID)
			if !ok || !s.snap.Containers[i].IsRunning() {
				s.fail("%v: not running", st)
				return
			}
			c := &s.snap.Containers[i]
			c.Status, c.ExitCode, c.Health, c.FinishedAt = reeve.StatusExited, 0, "", s.env.Now
		case ActionRemove:
			i, ok := s.find(st.Current.ID)
			if !ok || s.snap.Containers[i].IsRunning() {
				s.fail("%v: missing or running", st)
				return
			}
			s.snap.Containers = slices.Delete(s.snap.Containers, i, i+1)
		case ActionStart:
			s.start(before, st)
		case ActionUpdateMetadata:
			i, ok := s.find(st.Current.ID)
			if !ok || s.snap.Containers[i].ConfigHash != st.Target.Service.ConfigHash() {
				s.fail("%v: missing or another config", st)
				return
			}
			s.snap.Containers[i].Commit = st.Target.Commit
			s.snap.Containers[i].AppID = st.Target.AppID
		case ActionCreateNetwork:
			for _, n := range before.Networks {
				if n.AppUUID == st.Network.AppUUID && n.Name == st.Network.Name {
					s.fail("%v: exists", st)
				}
			}
			s.snap.Networks = append(s.snap.Networks, reeve.NetworkState{ID: "n-" + st.Network.Name,
				AppUUID: st.AppUUID, Name: st.Network.Name, ConfigHash: st.Network.Network.ConfigHash()})
		case ActionRemoveNetwork:
			for _, c := range before.Containers {
				if c.AppUUID == st.AppUUID && slices.Contains(c.Networks, st.Network.Name) {
					s.fail("%v: container %s is attached", st, c.ID)
				}
			}
			s.snap.Networks = slices.DeleteFunc(s.snap.Networks, func(n reeve.NetworkState) bool {
				return n.AppUUID == st.AppUUID && n.Name == st.Network.Name
			})
		case ActionCreateVolume:
			i := slices.IndexFunc(s.snap.Volumes, func(v reeve.VolumeState) bool {
				return v.AppUUID == st.AppUUID && v.Name == st.Volume.Name
			})
			switch {
			case st.Replace && i < 0, !st.Replace && i >= 0:
				s.fail("%v: replace=%v but exists=%v", st, st.Replace, i >= 0)
			case st.Replace:
				for _, c := range before.Containers {
					if c.AppUUID == st.AppUUID && slices.Contains(c.Volumes, st.Volume.Name) {
						s.fail("%v: container %s uses it", st, c.ID)
					}
				}
				s.snap.Volumes[i].ConfigHash = st.Volume.Volume.ConfigHash()
			default:
				s.snap.Volumes = append(s.snap.Volumes, reeve.VolumeState{AppUUID: st.AppUUID, Name: st.Volume.Name,
					ConfigHash: st.Volume.Volume.ConfigHash()})
			}
		case ActionRemoveImage:
			if !s.env.OwnedImages[st.Image] {
				s.fail("%v: not ours", st)
			}
			for _, c := range before.Containers {
				if c.Image == st.Image {
					s.fail("%v: used by %s", st, c.ID)
				}
			}
			for i := range s.snap.Images {
				s.snap.Images[i].Refs = slices.DeleteFunc(slices.Clone(s.snap.Images[i].Refs), func(r string) bool { return r == st.Image })
			}
			s.snap.Images = slices.DeleteFunc(s.snap.Images, func(img reeve.ImageState) bool { return len(img.Refs) == 0 })
		case ActionTakeLock:
			l := s.env.Locks[st.AppUUID]
			l.HeldByAgent = true
			s.env.Locks[st.AppUUID] = l
		case ActionReleaseLock:
			l := s.env.Locks[st.AppUUID]
			l.HeldByAgent = false
			s.env.Locks[st.AppUUID] = l
		case ActionNoop:
		default:
			s.fail("unexpected step %v", st)
		}
	}
}

func (s *sim) hasRunning(snap reeve.Snapshot, app, service string) bool {
	for _, c := range snap.Containers {
		if c.AppUUID == app && c.ServiceName == service && c.IsRunning() {
			return true
		}
	}
	return false
}

// checkKeepsRelease checks that the one container of a target service is
// killed for an image that is missing only when its strategy kills first
// and no image of the release failed to download.
func (s *sim) checkKeepsRelease(before reeve.Snapshot, failed map[string]string, st Step) {
	app, ok := s.target.Apps[st.AppUUID]
	if !ok {
		return
	}
	_, rel, ok := app.Release()
	if !ok {
		return
	}
	svc, ok := rel.Services[st.Service]
	if !ok {
		return
	}
	n := 0
	for _, c := range before.Containers {
		if c.AppUUID == st.AppUUID && c.ServiceName == st.Service {
			n++
		}
	}
	if n != 1 {
		return // an interrupted hand-over: kept the newest
	}
	for _, other := range rel.Services {
		img := ref(other.Image)
		if s.present(before, img) {
			continue
		}
		switch svc.Strategy() {
		case reeve.StrategyKillThenDownload, reeve.StrategyDeleteThenDownload:
			if _, ok := failed[img]; ok {
				s.fail("%v while %s cannot be downloaded", st, img)
			}
		default:
			s.fail("%v while %s is missing", st, img)
		}
	}
}

func (s *sim) fetch(image string) {
	if s.downloading[image] > 0 {
		s.fail("fetch of %s while in flight", image)
	}
	if s.failedOnce[image] {
		delete(s.failedOnce, image)
		s.env.FetchFailed[image] = "simulated failure"
		return
	}
	s.env.OwnedImages[image] = true
	if n := s.rng.Intn(3); n > 0 {
		s.downloading[image] = n
		s.env.InFlight[image] = true
		return
	}
	s.addImage(image)
}

func (s *sim) addImage(image string) {
	delete(s.env.FetchFailed, image)
	delete(s.env.InFlight, image)
	delete(s.downloading, image)
	if !s.present(s.snap, image) {
		s.snap.Images = append(s.snap.Images, reeve.ImageState{ID: "sha256:" + image, Refs: []string{image}})
	}
}

func (s *sim) start(before reeve.Snapshot, st Step) {
	spec := st.Target
	svc := spec.Service
	if st.Current != nil {
		i, ok := s.find(st.Current.ID)
		if !ok {
			s.fail("%v: no such container", st)
			return
		}
		c := &s.snap.Containers[i]
		if c.IsRunning() || c.ConfigHash != svc.ConfigHash() {
			s.fail("%v: running or another config", st)
		}
		c.Status, c.StartedAt, c.Health = reeve.StatusRunning, s.env.Now, initialHealth(svc)
		s.checkDeps(before, st)
		return
	}
	img := ref(svc.Image)
	if !s.present(before, img) {
		s.fail("%v: image %s missing", st, img)
	}
	_, rel, _ := s.target.Apps[spec.AppUUID].Release()
	for _, n := range slices.Sorted(maps.Keys(svc.Composition.Networks)) {
		if !slices.ContainsFunc(before.Networks, func(ns reeve.NetworkState) bool {
			return ns.AppUUID == spec.AppUUID && ns.Name == n && ns.ConfigHash == rel.Networks[n].ConfigHash()
		}) {
			s.fail("%v: network %s not ready", st, n)
		}
	}
	var vols []string
	for _, m := range svc.Composition.Volumes {
		if m.Type != reeve.MountVolume {
			continue
		}
		vols = append(vols, m.Source)
		if !slices.ContainsFunc(before.Volumes, func(vs reeve.VolumeState) bool {
			return vs.AppUUID == spec.AppUUID && vs.Name == m.Source && vs.ConfigHash == rel.Volumes[m.Source].ConfigHash()
		}) {
			s.fail("%v: volume %s not ready", st, m.Source)
		}
	}
	s.checkDeps(before, st)
	s.nextID++
	s.snap.Containers = append(s.snap.Containers, reeve.ServiceState{
		ID: fmt.Sprintf("s%04d", s.nextID), AppUUID: spec.AppUUID, AppID: spec.AppID, ServiceName: spec.ServiceName,
		Commit: spec.Commit, Image: img, ConfigHash: svc.ConfigHash(), Status: reeve.StatusRunning,
		Health: initialHealth(svc), Networks: slices.Sorted(maps.Keys(svc.Composition.Networks)), Volumes: vols,
		Labels: svc.Labels, CreatedAt: s.env.Now, StartedAt: s.env.Now,
	})
}

func (s *sim) checkDeps(before reeve.Snapshot, st Step) {
	_, rel, _ := s.target.Apps[st.AppUUID].Release()
	for dep, d := range st.Target.Service.Composition.DependsOn {
		hash := rel.Services[dep].ConfigHash()
		if !slices.ContainsFunc(before.Containers, func(c reeve.ServiceState) bool {
			if c.AppUUID != st.AppUUID || c.ServiceName != dep || c.ConfigHash != hash {
				return false
			}
			switch d.Condition {
			case reeve.ConditionHealthy:
				return c.Status == reeve.StatusRunning && c.Health == reeve.HealthHealthy
			case reeve.ConditionCompleted:
				return c.Status == reeve.StatusExited && c.ExitCode == 0
			}
			return c.Status == reeve.StatusRunning
		}) {
			s.fail("%v before its dependency %s (%s)", st, dep, d.Condition)
		}
	}
}

func initialHealth(svc reeve.Service) string {
	if svc.Composition.Healthcheck != nil {
		return reeve.HealthStarting
	}
	return reeve.HealthNone
}

// tick moves the world on between batches: the clock, downloads, health
// checks, jobs that finish, containers the engine brings back or removes.
func (s *sim) tick() {
	s.env.Now = s.env.Now.Add(time.Second)
	for _, img := range slices.Sorted(maps.Keys(s.downloading)) {
		s.downloading[img]--
		if s.downloading[img] == 0 {
			s.addImage(img)
		}
	}
	var kept []reeve.ServiceState
	for _, c := range s.snap.Containers {
		switch {
		case c.Status == reeve.StatusRemoving:
			continue
		case c.Status == reeve.StatusRestarting || c.Status == reeve.StatusPaused:
			c.Status = reeve.StatusRunning
		case c.Status == reeve.StatusRunning && c.Labels[labelJob] == "true":
			c.Status, c.ExitCode, c.Health, c.FinishedAt = reeve.StatusExited, 0, "", s.env.Now
		case c.Status == reeve.StatusRunning && c.Health == reeve.HealthStarting:
			c.Health = reeve.HealthHealthy
		}
		kept = append(kept, c)
	}
	s.snap.Containers = kept
	// A new container that runs next to an old one of its service signals
	// that it has taken over, one tick after it started.
	running := map[string]int{}
	for _, c := range s.snap.Containers {
		if c.Status == reeve.StatusRunning {
			running[c.AppUUID+"/"+c.ServiceName]++
		}
	}
	for k, n := range running {
		if n >= 2 {
			s.env.HandoverDone[k] = true
		}
	}
}

// checkConverged checks that the world matches the target.
func (s *sim) checkConverged(volumesBefore []reeve.VolumeState) {
	s.t.Helper()
	type key struct{ app, name string }
	byService := map[key][]reeve.ServiceState{}
	for _, c := range s.snap.Containers {
		byService[key{c.AppUUID, c.ServiceName}] = append(byService[key{c.AppUUID, c.ServiceName}], c)
	}
	want := map[key]bool{}
	for uuid, app := range s.target.Apps {
		commit, rel, ok := app.Release()
		if !ok {
			continue
		}
		for name, svc := range rel.Services {
			want[key{uuid, name}] = true
			cs := byService[key{uuid, name}]
			if !s.present(s.snap, ref(svc.Image)) {
				s.fail("%s/%s: image %s missing", uuid, name, svc.Image)
			}
			if len(cs) == 0 {
				if svc.Running {
					s.fail("%s/%s: no container", uuid, name)
				}
				continue
			}
			if len(cs) > 1 {
				s.fail("%s/%s: %d containers", uuid, name, len(cs))
				continue
			}
			c := cs[0]
			if c.ConfigHash != svc.ConfigHash() || c.Commit != commit {
				s.fail("%s/%s: container %s does not match (commit %s)", uuid, name, c.ID, c.Commit)
			}
			policy := svc.Composition.RestartPolicy()
			finished := c.Status == reeve.StatusExited && (policy == "no" || strings.HasPrefix(policy, "on-failure"))
			switch {
			case svc.Running && !c.IsRunning() && !finished:
				s.fail("%s/%s: container %s is %s", uuid, name, c.ID, c.Status)
			case !svc.Running && c.IsRunning():
				s.fail("%s/%s: container %s runs", uuid, name, c.ID)
			}
		}
		for n, def := range rel.Networks {
			if !slices.ContainsFunc(s.snap.Networks, func(ns reeve.NetworkState) bool {
				return ns.AppUUID == uuid && ns.Name == n && ns.ConfigHash == def.ConfigHash()
			}) {
				s.fail("%s: network %s not ready", uuid, n)
			}
		}
		for n, def := range rel.Volumes {
			if !slices.ContainsFunc(s.snap.Volumes, func(vs reeve.VolumeState) bool {
				return vs.AppUUID == uuid && vs.Name == n && vs.ConfigHash == def.ConfigHash()
			}) {
				s.fail("%s: volume %s not ready", uuid, n)
			}
		}
	}
	for k, cs := range byService {
		if !want[k] {
			s.fail("%s/%s: %d containers left", k.app, k.name, len(cs))
		}
	}
	for _, n := range s.snap.Networks {
		_, rel, _ := s.target.Apps[n.AppUUID].Release()
		if _, ok := rel.Networks[n.Name]; !ok {
			s.fail("network %s/%s left", n.AppUUID, n.Name)
		}
	}
	for _, v := range volumesBefore {
		if !slices.ContainsFunc(s.snap.Volumes, func(w reeve.VolumeState) bool { return w.AppUUID == v.AppUUID && w.Name == v.Name }) {
			s.fail("volume %s/%s was removed", v.AppUUID, v.Name)
		}
	}
	for app, l := range s.env.Locks {
		if l.HeldByAgent {
			s.fail("lock of %s still held", app)
		}
	}
	if g := newPlanner(s.snap, s.target, s.env).unusedOwnedImages(); len(g) > 0 {
		s.fail("unused images left: %v", g)
	}
}

func cloneSnap(s reeve.Snapshot) reeve.Snapshot {
	return reeve.Snapshot{
		Containers: slices.Clone(s.Containers),
		Networks:   slices.Clone(s.Networks),
		Volumes:    slices.Clone(s.Volumes),
		Images:     slices.Clone(s.Images),
	}
}

// Targets the property runs against.

const appGone = "zzzz" // an app that is in no target

func simTargets() []reeve.DeviceTarget {
	ho := strategy(reeve.StrategyHandOver)
	kill := strategy(reeve.StrategyKillThenDownload)
	del := strategy(reeve.StrategyDeleteThenDownload)
	job := label(labelJob, "true")
	t1A := mkApp(appA, "c1", map[string]reeve.Service{
		"db":      svc("db:1", healthcheck, mountVolume("data", "/data"), onNetwork("back")),
		"migrate": svc("migrate:1", job, restart("no"), onNetwork("back"), dependsOn("db", reeve.ConditionHealthy)),
		"web": svc("web:1", onNetwork("front"), onNetwork("back"),
			dependsOn("migrate", reeve.ConditionCompleted), dependsOn("db", reeve.ConditionStarted)),
		"proxy":  svc("proxy:1", ho, onNetwork("front"), dependsOn("web", reeve.ConditionStarted)),
		"worker": svc("worker:1", kill, dependsOn("db", reeve.ConditionHealthy)),
		"cache":  svc("cache:1", del, mountVolume("cache", "/c")),
		"off":    svc("off:1", notRunning),
	}).withNetworks(map[string]reeve.Network{"front": {}, "back": {Internal: true}}).
		withVolumes(map[string]reeve.Volume{"data": {}, "cache": {}})
	t1B := mkApp(appB, "b1", map[string]reeve.Service{
		"one": svc("shared:1"),
		"two": svc("shared:1", ho),
	})
	t2A := mkApp(appA, "c2", map[string]reeve.Service{
		"db":      svc("db:1", healthcheck, env("TUNING", "2"), mountVolume("data", "/data"), onNetwork("back")),
		"migrate": svc("migrate:1", job, restart("no"), onNetwork("back"), dependsOn("db", reeve.ConditionHealthy)),
		"web": svc("web:2", onNetwork("front"), onNetwork("back"),
			dependsOn("migrate", reeve.ConditionCompleted), dependsOn("db", reeve.ConditionStarted)),
		"proxy":  svc("proxy:2", ho, onNetwork("front"), dependsOn("web", reeve.ConditionStarted)),
		"worker": svc("worker:2", kill, dependsOn("db", reeve.ConditionHealthy)),
		"api":    svc("shared:1", del, restart("unless-stopped")),
		"off":    svc("off:1"),
	}).withNetworks(map[string]reeve.Network{"front": {Driver: "bridge"}, "back": {Internal: true}}).
		withVolumes(map[string]reeve.Volume{"data": {Labels: map[string]string{"tier": "2"}}, "cache": {}})
	t2B := mkApp(appB, "b2", map[string]reeve.Service{
		"one": svc("shared:1"),
		"two": svc("shared:2", ho, label("io.reeve.update.handover-timeout", "1500")),
	})
	noRelease := reeve.App{ID: 7, Name: "a", Releases: map[string]reeve.Release{}}
	t3 := device(t2B)
	t3.Apps[appA] = noRelease
	return []reeve.DeviceTarget{device(t1A, t1B), device(t2A, t2B), t3, device(), device(t1A)}
}

// randomState builds a current state around target: containers of its
// services and of others (old definitions, removed services, an app that is
// gone), in any status; images, networks and volumes present or not.
func randomState(rng *rand.Rand, target reeve.DeviceTarget, all []reeve.DeviceTarget) (reeve.Snapshot, Env) {
	var snap reeve.Snapshot
	e := Env{
		Now: t0, InFlight: map[string]bool{}, FetchFailed: map[string]string{}, HandoverDone: map[string]bool{},
		Locks: map[string]LockState{}, OwnedImages: map[string]bool{},
	}
	// Every definition a service has had, by app and name.
	type key struct{ app, name string }
	defs := map[key][]reeve.Service{}
	for _, t := range all {
		for uuid, app := range t.Apps {
			if _, rel, ok := app.Release(); ok {
				for _, n := range slices.Sorted(maps.Keys(rel.Services)) {
					defs[key{uuid, n}] = append(defs[key{uuid, n}], rel.Services[n])
				}
			}
		}
	}
	services := map[string][]string{appGone: {"ghost"}}
	for _, uuid := range []string{appA, appB} {
		names := []string{"legacy"}
		for k := range defs {
			if k.app == uuid {
				names = append(names, k.name)
			}
		}
		slices.Sort(names)
		services[uuid] = slices.Compact(names)
	}
	statuses := []string{reeve.StatusRunning, reeve.StatusRunning, reeve.StatusRunning, reeve.StatusExited,
		reeve.StatusCreated, reeve.StatusDead, reeve.StatusRestarting, reeve.StatusPaused, reeve.StatusRemoving}
	id := 0
	images := map[string]bool{}
	nets := map[key]bool{}
	vols := map[key]bool{}
	for _, uuid := range []string{appA, appB, appGone} {
		app, inTarget := target.Apps[uuid]
		commit, rel, hasRel := app.Release()
		for _, name := range services[uuid] {
			n := []int{0, 0, 0, 1, 1, 1, 1, 1, 2, 3}[rng.Intn(10)]
			for range n {
				var def reeve.Service
				c := commit
				tsvc, inRel := rel.Services[name]
				switch {
				case inTarget && hasRel && inRel && rng.Intn(2) == 0:
					def = tsvc
					if rng.Intn(3) == 0 {
						c = "c0"
					}
				case len(defs[key{uuid, name}]) > 0 && rng.Intn(2) == 0:
					def = defs[key{uuid, name}][rng.Intn(len(defs[key{uuid, name}]))]
					c = "c0"
				default:
					def = svc(fmt.Sprintf("old/%s:0", name))
					c = "c0"
				}
				id++
				at := t0.Add(-time.Duration(rng.Intn(50)+1) * time.Minute)
				cs := container(fmt.Sprintf("r%03d", id), uuid, name, c, def, statuses[rng.Intn(len(statuses))], created(at))
				if cs.IsRunning() && def.Composition.Healthcheck != nil {
					cs.Health = []string{reeve.HealthStarting, reeve.HealthHealthy}[rng.Intn(2)]
				}
				snap.Containers = append(snap.Containers, cs)
				images[cs.Image] = true // a container's image cannot be removed
				for _, n := range cs.Networks {
					nets[key{uuid, n}] = true
				}
				for _, v := range cs.Volumes {
					vols[key{uuid, v}] = true
				}
			}
		}
		if inTarget && hasRel {
			_ = commit
			for _, n := range slices.Sorted(maps.Keys(rel.Networks)) {
				if rng.Intn(3) > 0 {
					nets[key{uuid, n}] = true
				}
			}
			for _, v := range slices.Sorted(maps.Keys(rel.Volumes)) {
				if rng.Intn(3) > 0 {
					vols[key{uuid, v}] = true
				}
			}
			for _, n := range slices.Sorted(maps.Keys(rel.Services)) {
				if rng.Intn(2) == 0 {
					images[ref(rel.Services[n].Image)] = true
				}
			}
		}
		if rng.Intn(3) == 0 {
			nets[key{uuid, "stale"}] = true
		}
		if rng.Intn(3) == 0 {
			vols[key{uuid, "kept"}] = true
		}
		switch rng.Intn(8) {
		case 0, 1:
			e.Locks[uuid] = LockState{HeldByAgent: true}
		case 2:
			// A service holds its lock; the device overrides it.
			e.Locks[uuid] = LockState{HeldByUser: true}
			e.Force = true
		}
	}
	for _, k := range sortedKeyStructs(nets) {
		_, rel, _ := target.Apps[k.app].Release()
		def, ok := rel.Networks[k.name]
		if !ok || rng.Intn(3) == 0 {
			def = reeve.Network{Driver: "old-" + k.name}
		}
		snap.Networks = append(snap.Networks, reeve.NetworkState{ID: "n" + k.name, AppUUID: k.app, Name: k.name, ConfigHash: def.ConfigHash()})
	}
	for _, k := range sortedKeyStructs(vols) {
		_, rel, _ := target.Apps[k.app].Release()
		def, ok := rel.Volumes[k.name]
		if !ok || rng.Intn(3) == 0 {
			def = reeve.Volume{Driver: "old-" + k.name}
		}
		snap.Volumes = append(snap.Volumes, reeve.VolumeState{AppUUID: k.app, Name: k.name, ConfigHash: def.ConfigHash()})
	}
	images[ref("junk:1")] = true
	for _, img := range slices.Sorted(maps.Keys(images)) {
		snap.Images = append(snap.Images, reeve.ImageState{ID: "sha256:" + img, Refs: []string{img}})
		if rng.Intn(3) > 0 {
			e.OwnedImages[img] = true
		}
	}
	return snap, e
}

func sortedKeyStructs[K interface{ comparable }](m map[K]bool) []K {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b K) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	return keys
}

func newSim(t *testing.T, rng *rand.Rand, snap reeve.Snapshot, e Env, target reeve.DeviceTarget) *sim {
	s := &sim{t: t, rng: rng, snap: snap, env: e, target: target,
		downloading: map[string]int{}, failedOnce: map[string]bool{}}
	// Some images fail their first download.
	for _, app := range target.Apps {
		if _, rel, ok := app.Release(); ok {
			for _, n := range slices.Sorted(maps.Keys(rel.Services)) {
				if rng.Intn(5) == 0 {
					s.failedOnce[ref(rel.Services[n].Image)] = true
				}
			}
		}
	}
	return s
}

func TestPlanConvergesFromRandomStates(t *testing.T) {
	targets := simTargets()
	seeds := 300
	if testing.Short() {
		seeds = 50
	}
	for seed := range seeds {
		for ti, target := range targets {
			rng := rand.New(rand.NewSource(int64(seed*100 + ti)))
			snap, e := randomState(rng, target, targets)
			ok := t.Run(fmt.Sprintf("seed%d/target%d", seed, ti), func(t *testing.T) {
				s := newSim(t, rng, snap, e, target)
				vols := slices.Clone(snap.Volumes)
				s.run()
				if !t.Failed() {
					s.checkConverged(vols)
				}
			})
			if !ok {
				return // one failure tells enough
			}
		}
	}
}

// TestPlanUserLockHoldsBack runs the world with a service of app A holding
// its update lock (not overridden): no destructive step of A ever goes out
// (the world checks every batch), and the plan ends either converged or
// waiting on that lock.
func TestPlanUserLockHoldsBack(t *testing.T) {
	targets := simTargets()
	for seed := range 100 {
		for ti, target := range targets {
			rng := rand.New(rand.NewSource(int64(seed*100 + ti + 7)))
			snap, e := randomState(rng, target, targets)
			e.Force = false
			e.Locks[appA] = LockState{HeldByUser: true}
			s := newSim(t, rng, snap, e, target)
			for i := 0; ; i++ {
				if i == maxBatches {
					s.fail("seed %d target %d: neither converged nor waiting on the lock", seed, ti)
					return
				}
				steps := Plan(s.snap, s.target, s.env)
				s.log = append(s.log, fmt.Sprintf("batch %d: %v", i, steps))
				if steps == nil || len(steps) == 1 && strings.HasPrefix(steps[0].Reason, "update locked") {
					break
				}
				s.apply(steps)
				if t.Failed() {
					return
				}
				s.tick()
			}
		}
	}
}

// TestPlanConvergesThroughTargets moves one device from a random state
// through every target in turn, each from the state the last one left.
func TestPlanConvergesThroughTargets(t *testing.T) {
	targets := simTargets()
	for seed := range 100 {
		rng := rand.New(rand.NewSource(int64(seed)))
		snap, e := randomState(rng, targets[0], targets)
		s := newSim(t, rng, snap, e, targets[0])
		order := append(slices.Clone(targets), targets[0], targets[1])
		for i, target := range order {
			s.target = target
			s.failedOnce = newSim(t, rng, s.snap, s.env, target).failedOnce
			s.log = append(s.log, fmt.Sprintf("--- seed %d: target %d", seed, i))
			vols := slices.Clone(s.snap.Volumes)
			s.run()
			if t.Failed() {
				return
			}
			s.checkConverged(vols)
			if t.Failed() {
				return
			}
		}
	}
}
