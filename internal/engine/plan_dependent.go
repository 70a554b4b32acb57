package engine

import "reeve.dev/reeve"

// isDependent reports whether the agent stores a dependent app of that
// UUID.
func (p *planner) isDependent(uuid string) bool {
	_, ok := p.env.Dependents[uuid]
	return ok
}

// planDependentApp plans a dependent app (rule: dependent apps). Its
// images are never run: they carry the firmware the gateway application
// installs on the app's devices.
//
//   - Every image the app's target needs (its release's, and those of
//     devices pinned to another release) is fetched.
//   - When the target (the app or any device's) differs from the one
//     stored, updateDependentTargets stores it; it needs no image, so
//     devices are listed and marked for deletion at once.
//   - Once the stored target's images are all on the device, and the
//     gateway application has not been told of that target yet,
//     sendDependentHooks tells it: a hook must never send the gateway
//     for firmware the agent cannot serve yet.
//   - An app that left the target is removed with its devices
//     (removeDependentApp).
//
// None of these steps interrupts a service, so none waits for a lock.
func (p *planner) planDependentApp(a *appPlan, app reeve.App, inTarget bool) {
	stored, isStored := p.env.Dependents[a.uuid]
	if !inTarget {
		a.fetch = append(a.fetch, Step{Action: ActionRemoveDependentApp, AppUUID: a.uuid})
		return
	}
	tgt, ok := p.env.DependentTargets[a.uuid]
	if !ok { // the caller did not say: the app alone, without devices
		tgt = reeve.TargetState{"": {Apps: map[string]reeve.App{a.uuid: app}}}.DependentApps("")[a.uuid]
	}
	ready := true
	for _, img := range tgt.Images() {
		ref := normImage(img)
		if p.present[ref] {
			continue
		}
		ready = false
		if p.env.InFlight[ref] {
			a.wait("", "downloading the firmware image "+ref)
		} else {
			a.fetch = append(a.fetch, Step{Action: ActionFetch, AppUUID: a.uuid, Image: ref})
		}
	}
	hash := tgt.Hash()
	switch {
	case !isStored || stored.TargetHash != hash:
		t := tgt
		a.fetch = append(a.fetch, Step{Action: ActionUpdateDependentTargets, AppUUID: a.uuid, Dependent: &t})
	case ready && stored.HooksHash != stored.TargetHash:
		a.fetch = append(a.fetch, Step{Action: ActionSendDependentHooks, AppUUID: a.uuid, Hash: stored.TargetHash})
	}
}
