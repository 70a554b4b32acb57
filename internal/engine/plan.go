package engine

import (
	"cmp"
	"slices"
	"sort"
	"strings"

	"reeve.dev/reeve"
)

// Plan returns the next batch of steps that moves cur toward target. The
// steps of one batch may run concurrently. nil means converged.
//
// Plan is a pure function: it reads nothing but its arguments (env.Now is the
// only clock) and returns the same steps, in the same order, for the same
// input. It plans one batch at a time: a step that must wait for another
// (start after kill, createNetwork after removeNetwork, fetch after the old
// image is deleted) is emitted by a later call, once the snapshot shows the
// first one done. The caller runs the batch, reads a fresh snapshot and
// calls Plan again until it returns nil.
//
// The rules, each documented where it is implemented:
//
//   - Every app is planned on its own (planApp); a blocked app (locked,
//     downloading, waiting for a dependency) does not hold back the others.
//     An app that left the target, or has no release, is taken down
//     (planRemovedApp).
//   - Images are fetched first (planFetches); what needs them waits.
//   - Dead containers, and created ones that do not match, are removed
//     (removeDead); services that left the release are killed
//     (planRemovedServices).
//   - Old containers go the way their service's update strategy says
//     (planOld, planHandover); two or more containers of one service are
//     brought back to one (planDuplicates); a matching container is moved
//     to the new commit, started or stopped (planMatching); new ones start
//     once their images, networks, volumes and dependencies are ready and
//     no old container of the service is left (planStart).
//   - Networks and volumes are created before their users start, and
//     replaced after their users are gone (planNetworks, planVolumes).
//     Volumes are never removed: no rule emits ActionRemoveVolume.
//   - Destructive steps of an app are held behind its update lock
//     (gateLocks).
//   - Unused images the agent fetched are removed once everything else is
//     done (cleanupImages).
//
// The batch is sorted by app UUID, then action (in the order the actions are
// declared), then service name, then the object acted on, so that equal
// inputs give equal slices. Noops are only returned when nothing else can be
// done, and then exactly one: the first reason to wait.
func Plan(cur reeve.Snapshot, target reeve.DeviceTarget, env Env) []Step {
	p := newPlanner(cur, target, env)
	var steps, waits []Step
	for _, uuid := range p.appUUIDs() {
		s, w := p.planApp(uuid)
		steps = append(steps, s...)
		waits = append(waits, w...)
	}
	if len(steps) > 0 {
		sortSteps(steps)
		return dedupeImages(steps)
	}
	if len(waits) > 0 {
		// Rule: a plan that waits (downloads in flight, a hand-over, a
		// dependency, a lock) is exactly one noop, the first reason.
		sortSteps(waits)
		return waits[:1]
	}
	// Rule: images are cleaned up only when the device is otherwise
	// converged.
	return p.cleanupImages()
}

// planner holds the indexes one call of Plan works from.
type planner struct {
	cur    reeve.Snapshot
	target reeve.DeviceTarget
	env    Env

	present    map[string]bool                          // normalized refs of images on the device
	garbage    []string                                 // owned, present, unused refs (sorted)
	containers map[string][]reeve.ServiceState          // by app, oldest first
	networks   map[string]map[string]reeve.NetworkState // by app, then release network name
	volumes    map[string]map[string]reeve.VolumeState  // by app, then release volume name
	appsSeen   map[string]bool                          // every app UUID something refers to
}

func newPlanner(cur reeve.Snapshot, target reeve.DeviceTarget, env Env) *planner {
	p := &planner{
		cur:        cur,
		target:     target,
		env:        env,
		present:    map[string]bool{},
		containers: map[string][]reeve.ServiceState{},
		networks:   map[string]map[string]reeve.NetworkState{},
		volumes:    map[string]map[string]reeve.VolumeState{},
		appsSeen:   map[string]bool{},
	}
	for _, img := range cur.Images {
		for _, ref := range img.Refs {
			p.present[normImage(ref)] = true
		}
	}
	for _, c := range cur.Containers {
		p.containers[c.AppUUID] = append(p.containers[c.AppUUID], c)
		p.appsSeen[c.AppUUID] = true
	}
	for _, cs := range p.containers {
		sortContainers(cs)
	}
	for _, n := range cur.Networks {
		if p.networks[n.AppUUID] == nil {
			p.networks[n.AppUUID] = map[string]reeve.NetworkState{}
		}
		p.networks[n.AppUUID][n.Name] = n
		p.appsSeen[n.AppUUID] = true
	}
	for _, v := range cur.Volumes {
		if p.volumes[v.AppUUID] == nil {
			p.volumes[v.AppUUID] = map[string]reeve.VolumeState{}
		}
		p.volumes[v.AppUUID][v.Name] = v
		p.appsSeen[v.AppUUID] = true
	}
	for uuid := range target.Apps {
		p.appsSeen[uuid] = true
	}
	for uuid := range env.Dependents {
		p.appsSeen[uuid] = true
	}
	// An agent lock left on an app that is otherwise gone still has to be
	// released.
	for uuid, l := range env.Locks {
		if l.HeldByAgent {
			p.appsSeen[uuid] = true
		}
	}
	if !env.KeepImages {
		p.garbage = p.unusedOwnedImages()
	}
	return p
}

func (p *planner) appUUIDs() []string {
	return sortedKeys(p.appsSeen)
}

// unusedOwnedImages returns the references that may be removed: images on
// the device that the agent fetched (env.OwnedImages), that no container (of
// any status, any app) was created from and no target service of any app
// needs, and that are not being downloaded. An image with several refs is
// used when any of them is; then none of its refs is returned.
// UnusedImages lists the images the agent fetched (env.OwnedImages) that
// no container, no service of the target and no download in flight uses:
// what may go to make room.
func UnusedImages(cur reeve.Snapshot, target reeve.DeviceTarget, env Env) []string {
	p := &planner{cur: cur, target: target, env: env}
	return p.unusedOwnedImages()
}

func (p *planner) unusedOwnedImages() []string {
	used := map[string]bool{}
	for _, c := range p.cur.Containers {
		used[normImage(c.Image)] = true
	}
	for _, app := range p.target.Apps {
		if _, rel, ok := app.Release(); ok {
			for _, svc := range rel.Services {
				used[normImage(svc.Image)] = true
			}
		}
	}
	for _, da := range p.env.DependentTargets {
		for _, img := range da.Images() {
			used[normImage(img)] = true
		}
	}
	owned := map[string]bool{}
	for ref, ok := range p.env.OwnedImages {
		if ok {
			owned[normImage(ref)] = true
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, img := range p.cur.Images {
		inUse := false
		for _, ref := range img.Refs {
			r := normImage(ref)
			if used[r] || p.env.InFlight[r] {
				inUse = true
			}
		}
		if inUse {
			continue
		}
		for _, ref := range img.Refs {
			r := normImage(ref)
			if owned[r] && !seen[r] {
				seen[r] = true
				out = append(out, r)
			}
		}
	}
	sort.Strings(out)
	return out
}

// cleanupImages implements image cleanup: once the whole device is
// converged, every image the agent fetched that nothing uses any more is
// removed. Images the agent did not fetch (not in env.OwnedImages) are never
// removed.
func (p *planner) cleanupImages() []Step {
	var steps []Step
	for _, ref := range p.garbage {
		steps = append(steps, Step{Action: ActionRemoveImage, Image: ref})
	}
	return steps
}

// actionOrder ranks actions for sorting a batch: the order they are
// declared in.
var actionOrder = map[Action]int{}

func init() {
	for i, a := range []Action{
		ActionFetch, ActionKill, ActionStop, ActionStart, ActionRemove,
		ActionUpdateMetadata, ActionRestart, ActionHandover,
		ActionCreateNetwork, ActionRemoveNetwork, ActionCreateVolume,
		ActionRemoveVolume, ActionRemoveImage, ActionCleanup,
		ActionTakeLock, ActionReleaseLock,
		ActionUpdateDependentTargets, ActionSendDependentHooks, ActionRemoveDependentApp,
		ActionNoop,
	} {
		actionOrder[a] = i
	}
}

// sortSteps sorts a batch by app UUID, action, service name, then the object
// acted on, so that the output is deterministic.
func sortSteps(steps []Step) {
	slices.SortStableFunc(steps, func(a, b Step) int {
		return cmp.Or(
			strings.Compare(a.AppUUID, b.AppUUID),
			cmp.Compare(actionOrder[a.Action], actionOrder[b.Action]),
			strings.Compare(a.Service, b.Service),
			strings.Compare(objectName(a), objectName(b)),
			strings.Compare(a.Image, b.Image),
			strings.Compare(containerID(a), containerID(b)),
			strings.Compare(a.Reason, b.Reason),
		)
	})
}

func objectName(s Step) string {
	switch {
	case s.Network != nil:
		return s.Network.Name
	case s.Volume != nil:
		return s.Volume.Name
	}
	return ""
}

func containerID(s Step) string {
	if s.Current != nil {
		return s.Current.ID
	}
	return ""
}

// dedupeImages keeps one fetch and one removeImage per image in a sorted
// batch: the first, that is, the one of the first app and service that
// needs it.
func dedupeImages(steps []Step) []Step {
	fetch := map[string]bool{}
	remove := map[string]bool{}
	out := steps[:0]
	for _, s := range steps {
		switch s.Action {
		case ActionFetch:
			if fetch[s.Image] {
				continue
			}
			fetch[s.Image] = true
		case ActionRemoveImage:
			if remove[s.Image] {
				continue
			}
			remove[s.Image] = true
		}
		out = append(out, s)
	}
	return out
}

// sortContainers orders containers oldest first: by CreatedAt, ties broken
// by ID.
func sortContainers(cs []reeve.ServiceState) {
	slices.SortStableFunc(cs, func(a, b reeve.ServiceState) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
}

// normImage normalizes an image reference, keeping it as it is when it does
// not parse (validation refuses those in a target; a runtime reports
// normalized refs).
func normImage(ref string) string {
	n, err := reeve.NormalizeImage(ref)
	if err != nil {
		return ref
	}
	return n
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func ptr(c reeve.ServiceState) *reeve.ServiceState { return &c }
