package engine

import (
	"fmt"

	"reeve.dev/reeve"
)

// appPlan collects the steps of one app before its update lock decides which
// of them go out in this batch.
type appPlan struct {
	uuid string
	name string // for messages: the app's name, else its UUID

	safe        []Step // need no lock
	destructive []Step // held behind the app's update lock (rule: locks)
	fetch       []Step // go out whatever the lock says
	waits       []Step // noops: why the app is not converged yet

	// handled holds the IDs of containers that already have a step in this
	// batch: a batch never holds two steps on one container.
	handled map[string]bool
	// leaving holds the containers this batch kills, stops or removes.
	leaving map[string]bool
	// midUpdate is set when a destructive step of an update under way
	// comes in a later batch, after a short wait (a hand-over's new
	// container to run, a container to be removed): the agent's lock is
	// kept meanwhile instead of being released and taken again. Waiting
	// for images does not count: a lock is not held through a download.
	midUpdate bool
}

func (a *appPlan) wait(service, reason string) {
	a.waits = append(a.waits, Step{Action: ActionNoop, AppUUID: a.uuid, Service: service, Reason: reason})
}

// kill stops and removes c. It is destructive.
func (a *appPlan) kill(c reeve.ServiceState) {
	if a.handled[c.ID] {
		return
	}
	a.handled[c.ID] = true
	a.leaving[c.ID] = true
	a.destructive = append(a.destructive, Step{Action: ActionKill, AppUUID: a.uuid, Service: c.ServiceName, Current: ptr(c)})
}

// remove removes c, which is not running (dead, or created and never
// started). It interrupts nothing, so it needs no lock.
func (a *appPlan) remove(c reeve.ServiceState) {
	if a.handled[c.ID] {
		return
	}
	a.handled[c.ID] = true
	a.leaving[c.ID] = true
	a.safe = append(a.safe, Step{Action: ActionRemove, AppUUID: a.uuid, Service: c.ServiceName, Current: ptr(c)})
}

// planApp plans one app on its own (rule: multiple apps are planned
// independently): what one app waits for never holds back another.
func (p *planner) planApp(uuid string) (steps, waits []Step) {
	a := &appPlan{uuid: uuid, name: uuid, handled: map[string]bool{}, leaving: map[string]bool{}}
	app, inTarget := p.target.Apps[uuid]
	if app.Class == reeve.ClassDependent || (!inTarget && p.isDependent(uuid)) {
		p.planDependentApp(a, app, inTarget)
		return a.fetch, a.waits
	}
	if inTarget && app.Name != "" {
		a.name = app.Name
	}
	if commit, rel, ok := app.Release(); inTarget && ok {
		p.planRelease(a, uuid, app, commit, rel)
	} else {
		p.planRemovedApp(a)
	}
	return p.gateLocks(a)
}

// planRemovedApp handles an app that is no longer in the target, or whose
// target has no release (rule: apps removed from target): its containers are
// killed (dead and never-started ones removed), its networks are removed
// once no container of the app is attached to them, and its volumes are
// kept: data is never removed implicitly.
func (p *planner) planRemovedApp(a *appPlan) {
	cs := p.containers[a.uuid]
	for _, c := range cs {
		switch c.Status {
		case reeve.StatusDead, reeve.StatusCreated:
			a.remove(c)
		case reeve.StatusRemoving:
			a.wait(c.ServiceName, fmt.Sprintf("waiting for the container of %s to be removed", c.ServiceName))
		default:
			a.kill(c)
		}
	}
	for _, n := range sortedKeys(p.networks[a.uuid]) {
		if len(attachedTo(cs, n)) == 0 {
			a.safe = append(a.safe, removeNetworkStep(a.uuid, n))
		}
	}
	// Volumes of an app that is gone are kept; see planVolumes.
}

// gateLocks applies the update-lock rule to an app's steps:
//
//   - Destructive steps (kill, stop, handover, restart, and the start of a
//     hand-over's new container next to the old one) need the app's update
//     lock. When a service of the app holds it (HeldByUser) and the device
//     does not force, the destructive steps are held back and the app waits
//     with "update locked by a service of app <name>"; its other steps
//     (fetches, metadata, networks, ...) still go out.
//   - When the agent does not hold the lock yet, the batch carries only
//     takeLock for the app (with the services that have containers, sorted),
//     plus its fetches; the destructive steps come in the next batch.
//   - When the app has no destructive step to take and the agent holds the
//     lock, it is released (alongside the app's other steps), unless the
//     app is in the middle of an update whose next destructive step only
//     waits for a moment (see appPlan.midUpdate).
//
// An app with no containers has nothing to destroy, so installing a fresh
// app never takes a lock.
func (p *planner) gateLocks(a *appPlan) (steps, waits []Step) {
	lock := p.env.Locks[a.uuid]
	if len(a.destructive) == 0 {
		steps = append(append(steps, a.safe...), a.fetch...)
		if lock.HeldByAgent && !a.midUpdate {
			steps = append(steps, Step{Action: ActionReleaseLock, AppUUID: a.uuid})
		}
		return steps, a.waits
	}
	if lock.HeldByUser && !p.env.Force {
		locked := Step{Action: ActionNoop, AppUUID: a.uuid, Reason: "update locked by a service of app " + a.name}
		steps = append(append(steps, a.safe...), a.fetch...)
		return steps, append([]Step{locked}, a.waits...)
	}
	if !lock.HeldByAgent {
		take := Step{Action: ActionTakeLock, AppUUID: a.uuid, Services: p.servicesWithContainers(a.uuid)}
		return append(append(steps, a.fetch...), take), a.waits
	}
	steps = append(append(append(steps, a.safe...), a.destructive...), a.fetch...)
	return steps, a.waits
}

func (p *planner) servicesWithContainers(uuid string) []string {
	set := map[string]bool{}
	for _, c := range p.containers[uuid] {
		set[c.ServiceName] = true
	}
	return sortedKeys(set)
}

func attachedTo(cs []reeve.ServiceState, network string) []reeve.ServiceState {
	var out []reeve.ServiceState
	for _, c := range cs {
		for _, n := range c.Networks {
			if n == network {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

func usingVolume(cs []reeve.ServiceState, volume string) []reeve.ServiceState {
	var out []reeve.ServiceState
	for _, c := range cs {
		for _, v := range c.Volumes {
			if v == volume {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

func removeNetworkStep(app, name string) Step {
	return Step{Action: ActionRemoveNetwork, AppUUID: app, Network: &reeve.NetworkSpec{AppUUID: app, Name: name}}
}
