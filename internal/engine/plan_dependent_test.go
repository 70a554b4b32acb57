package engine

import (
	"slices"
	"testing"

	"reeve.dev/reeve"
)

const (
	depApp = "dddd"
	gw     = "gw01"
	dev1   = "dev1"
	dev2   = "dev2"
)

// gatewayTarget is a gateway's target state: its own app appA running
// gwImage, a dependent app whose release is fw, and dependent devices
// (uuid → the commit/image they are pinned to; "" follows the app).
func gatewayTarget(fw string, devices map[string]string) reeve.TargetState {
	depRelease := func(commit, image string) map[string]reeve.Release {
		return map[string]reeve.Release{commit: {ID: 7, Services: map[string]reeve.Service{"firmware": {Image: image}}}}
	}
	ts := reeve.TargetState{gw: {Name: "gw", Apps: map[string]reeve.App{
		appA:   {ID: 1, Name: "gateway", Releases: map[string]reeve.Release{newCommit: {ID: 1, Services: map[string]reeve.Service{"enm": svc("enm:1")}}}},
		depApp: {ID: 2, Name: "sensors", Class: reeve.ClassDependent, Releases: depRelease("fw1", fw)},
	}}}
	for uuid, pin := range devices {
		commit, image := "fw1", fw
		if pin != "" {
			commit, image = "fw0", pin
		}
		ts[uuid] = reeve.DeviceTarget{Name: uuid, Apps: map[string]reeve.App{
			depApp: {ID: 2, Name: "sensors", Class: reeve.ClassDependent, Releases: depRelease(commit, image)},
		}}
	}
	return ts
}

func dependentEnv(ts reeve.TargetState, stored map[string]DependentState) Env {
	return Env{Now: t0, DependentTargets: ts.DependentApps(gw), Dependents: stored}
}

// running is a snapshot where appA's service runs and the given images
// are present.
func running(images ...string) reeve.Snapshot {
	snap := reeve.Snapshot{Containers: []reeve.ServiceState{{
		ID: "c1", AppUUID: appA, ServiceName: "enm", Commit: newCommit, Image: ref("enm:1"),
		ConfigHash: svc("enm:1").ConfigHash(), Status: reeve.StatusRunning,
	}}}
	snap.Images = append(snap.Images, reeve.ImageState{ID: "i-enm", Refs: []string{ref("enm:1")}})
	for _, img := range images {
		snap.Images = append(snap.Images, reeve.ImageState{ID: "i-" + img, Refs: []string{ref(img)}})
	}
	return snap
}

func actions(steps []Step) []Action {
	out := make([]Action, len(steps))
	for i, s := range steps {
		out[i] = s.Action
	}
	return out
}

func TestDependentAppFetchesFirmwareAndStoresTargetsAtOnce(t *testing.T) {
	ts := gatewayTarget("fw:1", map[string]string{dev1: "", dev2: "fw:0"})
	steps := Plan(running(), ts[gw], dependentEnv(ts, nil))
	want := []Action{ActionFetch, ActionFetch, ActionUpdateDependentTargets}
	if got := actions(steps); !slices.Equal(got, want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
	if steps[0].Image != ref("fw:0") || steps[1].Image != ref("fw:1") {
		t.Errorf("fetches %s and %s, want the pinned device's image and the app's", steps[0].Image, steps[1].Image)
	}
	d := steps[2].Dependent
	if d == nil || len(d.Devices) != 2 || d.Devices[dev2].Commit != "fw0" || d.Commit != "fw1" {
		t.Fatalf("updateDependentTargets carries %+v", d)
	}
	for _, s := range steps {
		if s.Action == ActionStart || s.Action == ActionKill {
			t.Errorf("a dependent app must never run: %v", s)
		}
	}
}

func TestDependentHooksWaitForTheFirmware(t *testing.T) {
	ts := gatewayTarget("fw:1", map[string]string{dev1: ""})
	hash := ts.DependentApps(gw)[depApp].Hash()
	stored := map[string]DependentState{depApp: {TargetHash: hash}}

	// Stored, firmware still downloading: a noop, no hook.
	env := dependentEnv(ts, stored)
	env.InFlight = map[string]bool{ref("fw:1"): true}
	steps := Plan(running(), ts[gw], env)
	if len(steps) != 1 || steps[0].Action != ActionNoop {
		t.Fatalf("while the firmware downloads: %v, want one noop", steps)
	}

	// Firmware present: hooks go.
	steps = Plan(running("fw:1"), ts[gw], dependentEnv(ts, stored))
	if len(steps) != 1 || steps[0].Action != ActionSendDependentHooks || steps[0].Hash != hash || steps[0].AppUUID != depApp {
		t.Fatalf("with the firmware present: %v, want sendDependentHooks for %s", steps, hash)
	}

	// Hooks released for that target: converged.
	stored[depApp] = DependentState{TargetHash: hash, HooksHash: hash}
	if steps := Plan(running("fw:1"), ts[gw], dependentEnv(ts, stored)); len(steps) != 0 {
		t.Fatalf("converged gateway planned %v", steps)
	}
}

func TestDependentTargetChangeIsStoredAgain(t *testing.T) {
	old := gatewayTarget("fw:1", map[string]string{dev1: "", dev2: ""})
	hash := old.DependentApps(gw)[depApp].Hash()
	stored := map[string]DependentState{depApp: {TargetHash: hash, HooksHash: hash}}

	// A device leaves the target: the targets are stored again (which
	// marks it for deletion), with no image to wait for.
	cur := gatewayTarget("fw:1", map[string]string{dev1: ""})
	steps := Plan(running("fw:1"), cur[gw], dependentEnv(cur, stored))
	if len(steps) != 1 || steps[0].Action != ActionUpdateDependentTargets || len(steps[0].Dependent.Devices) != 1 {
		t.Fatalf("a device left: %v, want updateDependentTargets with one device", steps)
	}

	// A device's environment changes: stored again too.
	cur = gatewayTarget("fw:1", map[string]string{dev1: "", dev2: ""})
	cur[dev2].Apps[depApp].Releases["fw1"].Services["firmware"] = reeve.Service{Image: "fw:1", Environment: map[string]string{"RATE": "5"}}
	steps = Plan(running("fw:1"), cur[gw], dependentEnv(cur, stored))
	if len(steps) != 1 || steps[0].Action != ActionUpdateDependentTargets {
		t.Fatalf("an environment changed: %v, want updateDependentTargets", steps)
	}
}

func TestDependentAppLeavingIsRemoved(t *testing.T) {
	ts := gatewayTarget("fw:1", nil)
	delete(ts[gw].Apps, depApp)
	stored := map[string]DependentState{depApp: {TargetHash: "x", HooksHash: "x"}}
	steps := Plan(running("fw:1"), ts[gw], dependentEnv(ts, stored))
	if len(steps) != 1 || steps[0].Action != ActionRemoveDependentApp || steps[0].AppUUID != depApp {
		t.Fatalf("steps %v, want removeDependentApp %s", steps, depApp)
	}
}

func TestFirmwareImagesAreNotCleanedUp(t *testing.T) {
	ts := gatewayTarget("fw:1", map[string]string{dev1: "fw:0"})
	hash := ts.DependentApps(gw)[depApp].Hash()
	env := dependentEnv(ts, map[string]DependentState{depApp: {TargetHash: hash, HooksHash: hash}})
	env.OwnedImages = map[string]bool{ref("fw:1"): true, ref("fw:0"): true, ref("old:1"): true}
	steps := Plan(running("fw:1", "fw:0", "old:1"), ts[gw], env)
	if len(steps) != 1 || steps[0].Action != ActionRemoveImage || steps[0].Image != ref("old:1") {
		t.Fatalf("steps %v, want only the unused image removed", steps)
	}
}
