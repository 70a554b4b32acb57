package engine

import (
	"testing"
	"time"

	"reeve.dev/reeve"
)

func TestPlanFetch(t *testing.T) {
	fresh := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2")})
	shared := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("shared:1"), "api": svc("shared:1"), "db": svc("db:1")})
	other := mkApp(appB, newCommit, map[string]reeve.Service{"app": svc("web:2")})
	stopped := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", notRunning)})
	runPlanCases(t, []planCase{{
		name:   "missing image is fetched",
		target: device(fresh),
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name:   "one fetch per image, by the first service needing it",
		target: device(shared),
		want:   []Step{fetchStep(appA, "api", "shared:1"), fetchStep(appA, "db", "db:1")},
	}, {
		name:   "one fetch per image across apps",
		target: device(fresh, other),
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name:   "image in flight: a noop says what downloads",
		target: device(fresh),
		env:    Env{InFlight: map[string]bool{ref("web:2"): true}},
		want:   []Step{noopStep(appA, "web", "downloading "+ref("web:2"))},
	}, {
		name:   "image in flight, another missing: only the fetch",
		target: device(shared),
		env:    Env{InFlight: map[string]bool{ref("shared:1"): true}},
		want:   []Step{fetchStep(appA, "db", "db:1")},
	}, {
		name:   "failed image is fetched again",
		target: device(fresh),
		env:    Env{FetchFailed: map[string]string{ref("web:2"): "manifest unknown"}},
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name:   "a service that should not run still gets its image",
		target: device(stopped),
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name:   "present image is not fetched",
		cur:    reeve.Snapshot{Images: imgs("web:2")},
		target: device(fresh),
		want:   []Step{startStep(fresh, "web")},
	}})
}

func TestPlanDownloadThenKill(t *testing.T) {
	oldA := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1"), "api": svc("api:1")})
	newA := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2"), "api": svc("api:2")})
	oldWeb := oldA.ctr("c1", "web", reeve.StatusRunning)
	oldAPI := oldA.ctr("c2", "api", reeve.StatusRunning)
	newAPI := newA.ctr("c3", "api", reeve.StatusRunning)
	runPlanCases(t, []planCase{{
		name:   "images missing: old containers keep running",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, oldAPI}, Images: imgs("web:1", "api:1")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{fetchStep(appA, "api", "api:2"), fetchStep(appA, "web", "web:2"), releaseLockStep(appA)},
	}, {
		name:   "one image of the release missing: no kill at all",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, oldAPI}, Images: imgs("web:1", "api:1", "web:2")},
		target: device(newA),
		want:   []Step{fetchStep(appA, "api", "api:2")},
	}, {
		name:   "all images present: kill the old ones",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, oldAPI}, Images: imgs("web:1", "api:1", "web:2", "api:2")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(oldAPI), killStep(oldWeb)},
	}, {
		name:   "old gone: start the new one",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{newAPI}, Images: imgs("web:2", "api:2")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{startStep(newA, "web"), releaseLockStep(appA)},
	}, {
		name: "an exited old container is killed in the same flow",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{oldA.ctr("c1", "web", reeve.StatusExited), newAPI},
			Images: imgs("web:2", "api:2")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(oldA.ctr("c1", "web", reeve.StatusExited))},
	}})
}

func TestPlanKillThenDownload(t *testing.T) {
	kill := strategy(reeve.StrategyKillThenDownload)
	oldA := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", kill), "api": svc("api:1")})
	newA := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", kill), "api": svc("api:1")})
	oldWeb := oldA.ctr("c1", "web", reeve.StatusRunning)
	api := newA.ctr("c2", "api", reeve.StatusRunning)
	newB := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", kill), "api": svc("api:2")})
	runPlanCases(t, []planCase{{
		name:   "image missing: kill the old one and fetch in the same batch",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, api}, Images: imgs("web:1", "api:1")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{fetchStep(appA, "web", "web:2"), killStep(oldWeb)},
	}, {
		name:   "old gone, downloading: wait",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{api}, Images: imgs("web:1", "api:1")},
		target: device(newA),
		env:    Env{InFlight: map[string]bool{ref("web:2"): true}},
		want:   []Step{noopStep(appA, "web", "downloading "+ref("web:2"))},
	}, {
		name:   "image present: start",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{api}, Images: imgs("web:2", "api:1")},
		target: device(newA),
		want:   []Step{startStep(newA, "web")},
	}, {
		name: "another service's image missing: killed all the same, the start waits for every image",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, oldA.ctr("c2", "api", reeve.StatusRunning)},
			Images: imgs("web:2", "api:1")},
		target: device(newB),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{fetchStep(appA, "api", "api:2"), killStep(oldWeb)},
	}, {
		name:   "old gone, another image missing: no start yet",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldA.ctr("c2", "api", reeve.StatusRunning)}, Images: imgs("web:2", "api:1")},
		target: device(newB),
		want:   []Step{fetchStep(appA, "api", "api:2")},
	}})
}

func TestPlanDeleteThenDownload(t *testing.T) {
	del := strategy(reeve.StrategyDeleteThenDownload)
	oldA := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", del)})
	newA := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", del)})
	oldWeb := oldA.ctr("c1", "web", reeve.StatusRunning)
	appBOld := mkApp(appB, oldCommit, map[string]reeve.Service{"x": svc("web:1")})
	runPlanCases(t, []planCase{{
		name:   "kill the old container first; no fetch yet",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb}, Images: imgs("web:1")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA), OwnedImages: owned("web:1")},
		want:   []Step{killStep(oldWeb)},
	}, {
		name:   "no lock yet: take it, no fetch",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb}, Images: imgs("web:1")},
		target: device(newA),
		env:    Env{OwnedImages: owned("web:1")},
		want:   []Step{takeLockStep(appA, "web")},
	}, {
		name:   "old gone: remove the old image before fetching",
		cur:    reeve.Snapshot{Images: imgs("web:1")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA), OwnedImages: owned("web:1")},
		want:   []Step{removeImageStep(appA, "web", "web:1"), releaseLockStep(appA)},
	}, {
		name:   "old image not ours: fetch",
		cur:    reeve.Snapshot{Images: imgs("web:1")},
		target: device(newA),
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name: "old image used by another container: kept, fetch",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{appBOld.ctr("c9", "x", reeve.StatusRunning)},
			Images: imgs("web:1")},
		target: device(newA, appBOld),
		env:    Env{OwnedImages: owned("web:1")},
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name:   "old image needed by another app's target: kept, fetch",
		cur:    reeve.Snapshot{Images: imgs("web:1")},
		target: device(newA, appBOld),
		env:    Env{OwnedImages: owned("web:1")},
		want:   []Step{fetchStep(appA, "web", "web:2"), startStep(appBOld, "x")},
	}, {
		name:   "old image gone: fetch",
		target: device(newA),
		env:    Env{OwnedImages: owned("web:1")},
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name:   "image present: start",
		cur:    reeve.Snapshot{Images: imgs("web:2")},
		target: device(newA),
		env:    Env{OwnedImages: owned("web:2")},
		want:   []Step{startStep(newA, "web")},
	}})
}

func TestPlanHandover(t *testing.T) {
	ho := strategy(reeve.StrategyHandOver)
	oldA := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", ho)})
	newA := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", ho)})
	oldWeb := oldA.ctr("c1", "web", reeve.StatusRunning)
	started := t0.Add(time.Minute)
	newWeb := newA.ctr("c2", "web", reeve.StatusRunning, created(started))
	deadline := started.Add(reeve.DefaultHandoverTimeout)
	short := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", ho, label("io.balena.update.handover-timeout", "5000"))})
	shortNew := short.ctr("c2", "web", reeve.StatusRunning, created(started))
	restarting := newA.ctr("c2", "web", reeve.StatusRestarting, created(started))
	runPlanCases(t, []planCase{{
		name:   "images missing: fetch, old keeps running",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb}, Images: imgs("web:1")},
		target: device(newA),
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name:   "images present, no lock: take it",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		want:   []Step{takeLockStep(appA, "web")},
	}, {
		name:   "images present: start the new one next to the old",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{startStep(newA, "web")},
	}, {
		name:   "new one running: wait for its signal, until the deadline",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, newWeb}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		env:    Env{Now: started.Add(time.Second), Locks: heldByAgent(appA)},
		want:   []Step{noopStep(appA, "web", "handing over to the new web until the new one signals or "+deadline.UTC().Format(time.RFC3339))},
	}, {
		name:   "hand-over timeout label",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, shortNew}, Images: imgs("web:1", "web:2")},
		target: device(short),
		env:    Env{Now: started.Add(6 * time.Second), Locks: heldByAgent(appA)},
		want:   []Step{handoverStep(short, oldWeb, started.Add(5*time.Second))},
	}, {
		name: "hand-over signalled: end it, killing the old one",
		cur:  reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, newWeb}, Images: imgs("web:1", "web:2")},
		env: Env{Now: started.Add(time.Second), Locks: heldByAgent(appA),
			HandoverDone: map[string]bool{appA + "/web": true}},
		target: device(newA),
		want:   []Step{handoverStep(newA, oldWeb, deadline)},
	}, {
		name:   "deadline past: end it, killing the old one",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, newWeb}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		env:    Env{Now: deadline.Add(time.Second), Locks: heldByAgent(appA)},
		want:   []Step{handoverStep(newA, oldWeb, deadline)},
	}, {
		name:   "new one restarting: wait for it",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, restarting}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		env:    Env{Now: started.Add(time.Second), Locks: heldByAgent(appA)},
		want:   []Step{noopStep(appA, "web", "waiting for the new web to run")},
	}, {
		name:   "old one gone: done, lock released",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{newWeb}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		env:    Env{Now: started.Add(time.Second), Locks: heldByAgent(appA)},
		want:   []Step{releaseLockStep(appA)},
	}, {
		name:   "old one not running: nothing to hand over, kill it first",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldA.ctr("c1", "web", reeve.StatusExited)}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(oldA.ctr("c1", "web", reeve.StatusExited))},
	}})
}

func TestPlanDependsOnStarted(t *testing.T) {
	a := mkApp(appA, newCommit, map[string]reeve.Service{
		"db":  svc("db:1"),
		"web": svc("web:1", dependsOn("db", "")),
	})
	images := imgs("db:1", "web:1")
	runPlanCases(t, []planCase{{
		name:   "dependency not there: start it first",
		cur:    reeve.Snapshot{Images: images},
		target: device(a),
		want:   []Step{startStep(a, "db")},
	}, {
		name:   "dependency created, not started: start it, the dependent waits",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{a.ctr("c1", "db", reeve.StatusCreated)}, Images: images},
		target: device(a),
		want:   []Step{startCurStep(a, a.ctr("c1", "db", reeve.StatusCreated))},
	}, {
		name:   "dependency running: start",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{a.ctr("c1", "db", reeve.StatusRunning)}, Images: images},
		target: device(a),
		want:   []Step{startStep(a, "web")},
	}, {
		name: "dependency running an old release: updated first, the dependent waits",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{container("c1", appA, "db", oldCommit, svc("db:0"), reeve.StatusRunning)},
			Images: append(images, imgs("db:0")...)},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(container("c1", appA, "db", oldCommit, svc("db:0"), reeve.StatusRunning))},
	}, {
		name: "dependency exited: started again first",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{container("c1", appA, "db", newCommit, svc("db:1"), reeve.StatusExited)},
			Images: images},
		target: device(mkApp(appA, newCommit, map[string]reeve.Service{
			"db":  svc("db:1"),
			"web": svc("web:1", dependsOn("db", reeve.ConditionStarted)),
		})),
		want: []Step{startCurStep(a, a.ctr("c1", "db", reeve.StatusExited))},
	}, {
		name:   "images of the release missing: no start",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{a.ctr("c1", "db", reeve.StatusRunning)}, Images: imgs("db:1")},
		target: device(a),
		want:   []Step{fetchStep(appA, "web", "web:1")},
	}})
	noRestart := mkApp(appA, newCommit, map[string]reeve.Service{
		"db":  svc("db:1", restart("no")),
		"web": svc("web:1", dependsOn("db", reeve.ConditionStarted)),
	})
	runPlanCases(t, []planCase{{
		name:   "dependency exited with restart no: wait",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{noRestart.ctr("c1", "db", reeve.StatusExited)}, Images: images},
		target: device(noRestart),
		want:   []Step{noopStep(appA, "web", "waiting for db")},
	}})
}

func TestPlanDependsOnHealthy(t *testing.T) {
	a := mkApp(appA, newCommit, map[string]reeve.Service{
		"db":  svc("db:1", healthcheck),
		"web": svc("web:1", dependsOn("db", reeve.ConditionHealthy)),
	})
	images := imgs("db:1", "web:1")
	db := func(status, h string) reeve.Snapshot {
		return reeve.Snapshot{Containers: []reeve.ServiceState{a.ctr("c1", "db", status, health(h))}, Images: images}
	}
	runPlanCases(t, []planCase{{
		name:   "health starting: wait",
		cur:    db(reeve.StatusRunning, reeve.HealthStarting),
		target: device(a),
		want:   []Step{noopStep(appA, "web", "waiting for db")},
	}, {
		name:   "unhealthy: wait",
		cur:    db(reeve.StatusRunning, reeve.HealthUnhealthy),
		target: device(a),
		want:   []Step{noopStep(appA, "web", "waiting for db")},
	}, {
		name:   "no healthcheck at all: running is all it can say, start",
		cur:    db(reeve.StatusRunning, reeve.HealthNone),
		target: device(a),
		want:   []Step{startStep(a, "web")},
	}, {
		name:   "healthy: start",
		cur:    db(reeve.StatusRunning, reeve.HealthHealthy),
		target: device(a),
		want:   []Step{startStep(a, "web")},
	}})
}

func TestPlanDependsOnCompleted(t *testing.T) {
	a := mkApp(appA, newCommit, map[string]reeve.Service{
		"migrate": svc("migrate:1", restart("no")),
		"web":     svc("web:1", dependsOn("migrate", reeve.ConditionCompleted)),
	})
	images := imgs("migrate:1", "web:1")
	job := func(status string, code int) reeve.Snapshot {
		return reeve.Snapshot{Containers: []reeve.ServiceState{a.ctr("c1", "migrate", status, exitCode(code))}, Images: images}
	}
	runPlanCases(t, []planCase{{
		name:   "job not there: run it first",
		cur:    reeve.Snapshot{Images: images},
		target: device(a),
		want:   []Step{startStep(a, "migrate")},
	}, {
		name:   "job running: wait",
		cur:    job(reeve.StatusRunning, 0),
		target: device(a),
		want:   []Step{noopStep(appA, "web", "waiting for migrate")},
	}, {
		name:   "job failed: wait",
		cur:    job(reeve.StatusExited, 1),
		target: device(a),
		want:   []Step{noopStep(appA, "web", "waiting for migrate")},
	}, {
		name:   "job done: start",
		cur:    job(reeve.StatusExited, 0),
		target: device(a),
		want:   []Step{startStep(a, "web")},
	}})
}

func TestPlanNetworkCreateBeforeStart(t *testing.T) {
	front := reeve.Network{Driver: "bridge"}
	data := reeve.Volume{}
	a := mkApp(appA, newCommit, map[string]reeve.Service{
		"web":   svc("web:1", onNetwork("front")),
		"db":    svc("db:1", mountVolume("data", "/data")),
		"other": svc("other:1"),
	}).withNetworks(map[string]reeve.Network{"front": front}).withVolumes(map[string]reeve.Volume{"data": data})
	images := imgs("web:1", "db:1", "other:1")
	runPlanCases(t, []planCase{{
		name:   "network and volume missing: create them; their users start later",
		cur:    reeve.Snapshot{Images: images},
		target: device(a),
		want: []Step{startStep(a, "other"), createNetworkStep(appA, "front", front),
			createVolumeStep(appA, "data", data, false)},
	}, {
		name:   "created while images download",
		target: device(a),
		want: []Step{fetchStep(appA, "db", "db:1"), fetchStep(appA, "other", "other:1"), fetchStep(appA, "web", "web:1"),
			createNetworkStep(appA, "front", front), createVolumeStep(appA, "data", data, false)},
	}, {
		name: "network and volume there: start",
		cur: reeve.Snapshot{Images: images, Networks: []reeve.NetworkState{network(appA, "front", front)},
			Volumes: []reeve.VolumeState{volume(appA, "data", data)}},
		target: device(a),
		want:   []Step{startStep(a, "db"), startStep(a, "other"), startStep(a, "web")},
	}})
}

func TestPlanChangedNetwork(t *testing.T) {
	oldNet := reeve.Network{Driver: "bridge"}
	newNet := reeve.Network{Driver: "bridge", Internal: true}
	a := mkApp(appA, newCommit, map[string]reeve.Service{
		"web": svc("web:1", onNetwork("front")),
		"api": svc("api:1"),
	}).withNetworks(map[string]reeve.Network{"front": newNet})
	web := a.ctr("c1", "web", reeve.StatusRunning)
	api := a.ctr("c2", "api", reeve.StatusRunning)
	images := imgs("web:1", "api:1")
	oldNetState := []reeve.NetworkState{network(appA, "front", oldNet)}
	gone := mkApp(appA, newCommit, map[string]reeve.Service{"api": svc("api:1")})
	oldWeb := container("c1", appA, "web", oldCommit, svc("web:0", onNetwork("front")), reeve.StatusRunning)
	runPlanCases(t, []planCase{{
		name:   "changed: kill the containers attached to it, not the others",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, api}, Images: images, Networks: oldNetState},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(web)},
	}, {
		name:   "changed, no lock: take it",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, api}, Images: images, Networks: oldNetState},
		target: device(a),
		want:   []Step{takeLockStep(appA, "api", "web")},
	}, {
		name: "changed while images download: the running release keeps running",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{web, api}, Images: imgs("web:1"),
			Networks: oldNetState},
		target: device(mkApp(appA, newCommit, map[string]reeve.Service{
			"web": svc("web:1", onNetwork("front")),
			"api": svc("api:2"),
		}).withNetworks(map[string]reeve.Network{"front": newNet})),
		want: []Step{fetchStep(appA, "api", "api:2")},
	}, {
		name:   "changed, nobody attached: remove it",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{api}, Images: images, Networks: oldNetState},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{removeNetStep(appA, "front"), releaseLockStep(appA)},
	}, {
		name:   "removed: create it again",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{api}, Images: images},
		target: device(a),
		want:   []Step{createNetworkStep(appA, "front", newNet)},
	}, {
		name: "created: start",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{api}, Images: images,
			Networks: []reeve.NetworkState{network(appA, "front", newNet)}},
		target: device(a),
		want:   []Step{startStep(a, "web")},
	}, {
		name: "no longer in the release: removed once its containers are gone",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, api}, Images: imgs("api:1", "web:0"),
			Networks: oldNetState},
		target: device(gone),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(oldWeb)},
	}, {
		name:   "no longer in the release, unused: removed",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{api}, Images: imgs("api:1"), Networks: oldNetState},
		target: device(gone),
		want:   []Step{removeNetStep(appA, "front")},
	}})
}

func TestPlanChangedVolumeKeepsData(t *testing.T) {
	oldVol := reeve.Volume{}
	newVol := reeve.Volume{Driver: "local", DriverOpts: map[string]string{"type": "tmpfs"}}
	a := mkApp(appA, newCommit, map[string]reeve.Service{
		"db":  svc("db:1", mountVolume("data", "/data")),
		"web": svc("web:1"),
	}).withVolumes(map[string]reeve.Volume{"data": newVol})
	db := a.ctr("c1", "db", reeve.StatusRunning)
	web := a.ctr("c2", "web", reeve.StatusRunning)
	images := imgs("db:1", "web:1")
	runPlanCases(t, []planCase{{
		name:   "changed: kill its users first",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{db, web}, Images: images, Volumes: []reeve.VolumeState{volume(appA, "data", oldVol)}},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(db)},
	}, {
		name:   "no user left: replace it, keeping its data",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web}, Images: images, Volumes: []reeve.VolumeState{volume(appA, "data", oldVol)}},
		target: device(a),
		want:   []Step{createVolumeStep(appA, "data", newVol, true)},
	}, {
		name:   "replaced: start",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web}, Images: images, Volumes: []reeve.VolumeState{volume(appA, "data", newVol)}},
		target: device(a),
		want:   []Step{startStep(a, "db")},
	}})
}

func TestPlanVolumeNeverRemoved(t *testing.T) {
	data := reeve.Volume{}
	noVol := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:1")})
	web := noVol.ctr("c1", "web", reeve.StatusRunning)
	noRelease := device()
	noRelease.Apps[appA] = reeve.App{ID: 7, Name: "a", Releases: map[string]reeve.Release{}}
	runPlanCases(t, []planCase{{
		name: "volume left the release: kept",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{web}, Images: imgs("web:1"),
			Volumes: []reeve.VolumeState{volume(appA, "data", data)}},
		target: device(noVol),
		want:   nil,
	}, {
		name:   "app left the target: its volume is kept",
		cur:    reeve.Snapshot{Volumes: []reeve.VolumeState{volume(appA, "data", data)}},
		target: device(),
		want:   nil,
	}, {
		name: "app left the target: containers killed, volume kept",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{web}, Images: imgs("web:1"),
			Volumes: []reeve.VolumeState{volume(appA, "data", data)}},
		target: device(),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(web)},
	}, {
		name:   "app without a release: volume kept",
		cur:    reeve.Snapshot{Volumes: []reeve.VolumeState{volume(appA, "data", data)}},
		target: noRelease,
		want:   nil,
	}})
}

func TestPlanInterruptedHandoverKeepsNewer(t *testing.T) {
	a := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2")})
	old := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1")})
	ho := strategy(reeve.StrategyHandOver)
	hoA := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", ho)})
	hoOld := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", ho)})
	t1, t2, t3 := t0, t0.Add(time.Minute), t0.Add(2*time.Minute)
	images := imgs("web:1", "web:2")
	lock := Env{Locks: heldByAgent(appA), Now: t3}
	runPlanCases(t, []planCase{{
		name: "two matching: the older goes",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{
			a.ctr("c2", "web", reeve.StatusRunning, created(t2)), a.ctr("c1", "web", reeve.StatusRunning, created(t1))},
			Images: images},
		target: device(a),
		env:    lock,
		want:   []Step{killStep(a.ctr("c1", "web", reeve.StatusRunning, created(t1)))},
	}, {
		name: "old one newer: the matching older one goes",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{
			a.ctr("c1", "web", reeve.StatusRunning, created(t1)), old.ctr("c2", "web", reeve.StatusRunning, created(t2))},
			Images: images},
		target: device(a),
		env:    lock,
		want:   []Step{killStep(a.ctr("c1", "web", reeve.StatusRunning, created(t1)))},
	}, {
		name: "same creation time: the higher ID is kept",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{
			a.ctr("c9", "web", reeve.StatusRunning), a.ctr("c5", "web", reeve.StatusRunning)},
			Images: images},
		target: device(a),
		env:    lock,
		want:   []Step{killStep(a.ctr("c5", "web", reeve.StatusRunning))},
	}, {
		name: "three: all but the newest go",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{
			old.ctr("c1", "web", reeve.StatusRunning, created(t1)), a.ctr("c3", "web", reeve.StatusExited, created(t3)),
			old.ctr("c2", "web", reeve.StatusExited, created(t2))},
			Images: images},
		target: device(a),
		env:    lock,
		want: []Step{killStep(old.ctr("c1", "web", reeve.StatusRunning, created(t1))),
			killStep(old.ctr("c2", "web", reeve.StatusExited, created(t2)))},
	}, {
		name: "hand-over, new one never started: the old one goes",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{
			hoOld.ctr("c1", "web", reeve.StatusRunning, created(t1)), hoA.ctr("c2", "web", reeve.StatusCreated, created(t2))},
			Images: images},
		target: device(hoA),
		env:    lock,
		want:   []Step{killStep(hoOld.ctr("c1", "web", reeve.StatusRunning, created(t1)))},
	}, {
		name: "hand-over, both running: a hand-over in progress",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{
			hoOld.ctr("c1", "web", reeve.StatusRunning, created(t1)), hoA.ctr("c2", "web", reeve.StatusRunning, created(t2))},
			Images: images},
		target: device(hoA),
		env:    lock,
		want:   []Step{noopStep(appA, "web", "handing over to the new web until the new one signals or "+t2.Add(reeve.DefaultHandoverTimeout).UTC().Format(time.RFC3339))},
	}, {
		name: "not hand-over, both running: the older goes",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{
			old.ctr("c1", "web", reeve.StatusRunning, created(t1)), a.ctr("c2", "web", reeve.StatusRunning, created(t2))},
			Images: images},
		target: device(a),
		env:    lock,
		want:   []Step{killStep(old.ctr("c1", "web", reeve.StatusRunning, created(t1)))},
	}, {
		name: "no lock: take it",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{
			old.ctr("c1", "web", reeve.StatusRunning, created(t1)), a.ctr("c2", "web", reeve.StatusRunning, created(t2))},
			Images: images},
		target: device(a),
		want:   []Step{takeLockStep(appA, "web")},
	}})
}

func TestPlanDeadRemoved(t *testing.T) {
	a := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2")})
	old := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1")})
	images := imgs("web:1", "web:2")
	runPlanCases(t, []planCase{{
		name:   "dead old container: removed without a lock; the start waits",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusDead)}, Images: images},
		target: device(a),
		want:   []Step{removeStep(old.ctr("c1", "web", reeve.StatusDead))},
	}, {
		name:   "dead matching container: removed, then started again",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{a.ctr("c1", "web", reeve.StatusDead)}, Images: images},
		target: device(a),
		want:   []Step{removeStep(a.ctr("c1", "web", reeve.StatusDead))},
	}, {
		name:   "created old container: removed",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusCreated)}, Images: images},
		target: device(a),
		want:   []Step{removeStep(old.ctr("c1", "web", reeve.StatusCreated))},
	}, {
		name:   "created old container, images missing: removed anyway",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusCreated)}, Images: imgs("web:1")},
		target: device(a),
		want:   []Step{fetchStep(appA, "web", "web:2"), removeStep(old.ctr("c1", "web", reeve.StatusCreated))},
	}, {
		name:   "dead container of an app that left: removed",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusDead)}, Images: images},
		target: device(),
		want:   []Step{removeStep(old.ctr("c1", "web", reeve.StatusDead))},
	}, {
		name: "dead container next to a live one: both handled, no start",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusDead),
			old.ctr("c2", "web", reeve.StatusRunning)}, Images: images},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{removeStep(old.ctr("c1", "web", reeve.StatusDead))},
	}, {
		name:   "exited old container: killed in the update flow",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusExited)}, Images: images},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(old.ctr("c1", "web", reeve.StatusExited))},
	}, {
		name:   "container being removed: wait",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusRemoving)}, Images: images},
		target: device(a),
		want:   []Step{noopStep(appA, "web", "waiting for the old container of web to be removed")},
	}})
}

func TestPlanUpdateMetadata(t *testing.T) {
	old := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1"), "api": svc("api:1")})
	same := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:1"), "api": svc("api:1")})
	changed := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:1"), "api": svc("api:2")})
	web := old.ctr("c1", "web", reeve.StatusRunning)
	api := old.ctr("c2", "api", reeve.StatusRunning)
	otherID := same.ctr("c1", "web", reeve.StatusRunning, func(c *reeve.ServiceState) { c.AppID = 99 })
	runPlanCases(t, []planCase{{
		name:   "same config, new commit: metadata only",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, api}, Images: imgs("web:1", "api:1")},
		target: device(same),
		want:   []Step{updateMetadataStep(same, api), updateMetadataStep(same, web)},
	}, {
		name:   "a stopped container too",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusExited), same.ctr("c2", "api", reeve.StatusRunning)}, Images: imgs("web:1", "api:1")},
		target: device(same),
		want:   []Step{updateMetadataStep(same, old.ctr("c1", "web", reeve.StatusExited))},
	}, {
		name:   "app ID differs, commit same: nothing",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{otherID, same.ctr("c2", "api", reeve.StatusRunning)}, Images: imgs("web:1", "api:1")},
		target: device(same),
		want:   nil,
	}, {
		name:   "while another service downloads",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, api}, Images: imgs("web:1", "api:1")},
		target: device(changed),
		want:   []Step{fetchStep(appA, "api", "api:2"), updateMetadataStep(changed, web)},
	}})
}

func TestPlanRunningFalse(t *testing.T) {
	stopped := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:1", notRunning)})
	images := imgs("web:1")
	app := func(opts ...func(*reeve.Service)) tapp {
		return mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:1", opts...)})
	}
	exited := func(a tapp) reeve.Snapshot {
		return reeve.Snapshot{Containers: []reeve.ServiceState{a.ctr("c1", "web", reeve.StatusExited)}, Images: images}
	}
	runPlanCases(t, []planCase{{
		name:   "running=false, container running: stop",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{stopped.ctr("c1", "web", reeve.StatusRunning)}, Images: images},
		target: device(stopped),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{stopStep(stopped.ctr("c1", "web", reeve.StatusRunning))},
	}, {
		name:   "running=false, no lock: take it",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{stopped.ctr("c1", "web", reeve.StatusRunning)}, Images: images},
		target: device(stopped),
		want:   []Step{takeLockStep(appA, "web")},
	}, {
		name:   "running=false, stopped: converged",
		cur:    exited(stopped),
		target: device(stopped),
		want:   nil,
	}, {
		name:   "running=false, no container: converged",
		cur:    reeve.Snapshot{Images: images},
		target: device(stopped),
		want:   nil,
	}, {
		name:   "running=false, old container: replaced by nothing",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{container("c1", appA, "web", oldCommit, svc("web:0"), reeve.StatusRunning)}, Images: imgs("web:0", "web:1")},
		target: device(stopped),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(container("c1", appA, "web", oldCommit, svc("web:0"), reeve.StatusRunning))},
	}, {
		name:   "running=true, created: start it",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{app().ctr("c1", "web", reeve.StatusCreated)}, Images: images},
		target: device(app()),
		want:   []Step{startCurStep(app(), app().ctr("c1", "web", reeve.StatusCreated))},
	}, {
		name:   "exited, restart always (the default): start it again",
		cur:    exited(app()),
		target: device(app()),
		want:   []Step{startCurStep(app(), app().ctr("c1", "web", reeve.StatusExited))},
	}, {
		name:   "exited, unless-stopped: start it again",
		cur:    exited(app(restart("unless-stopped"))),
		target: device(app(restart("unless-stopped"))),
		want:   []Step{startCurStep(app(restart("unless-stopped")), app(restart("unless-stopped")).ctr("c1", "web", reeve.StatusExited))},
	}, {
		name:   "exited, restart no: a finished job",
		cur:    exited(app(restart("no"))),
		target: device(app(restart("no"))),
		want:   nil,
	}, {
		name:   "exited, on-failure: left alone",
		cur:    exited(app(restart("on-failure:3"))),
		target: device(app(restart("on-failure:3"))),
		want:   nil,
	}})
}

func TestPlanRemovedService(t *testing.T) {
	old := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1"), "legacy": svc("legacy:1")})
	a := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:1")})
	legacy := old.ctr("c2", "legacy", reeve.StatusRunning)
	web := a.ctr("c1", "web", reeve.StatusRunning)
	b := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2")})
	runPlanCases(t, []planCase{{
		name:   "service left the release: killed",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, legacy}, Images: imgs("web:1", "legacy:1")},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(legacy)},
	}, {
		name:   "no lock: take it for every service with a container",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, legacy}, Images: imgs("web:1", "legacy:1")},
		target: device(a),
		want:   []Step{takeLockStep(appA, "legacy", "web")},
	}, {
		name: "while the new release downloads: kept running",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusRunning), legacy},
			Images: imgs("web:1", "legacy:1")},
		target: device(b),
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name:   "stopped container of a removed service: killed too",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, old.ctr("c2", "legacy", reeve.StatusExited)}, Images: imgs("web:1", "legacy:1")},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(old.ctr("c2", "legacy", reeve.StatusExited))},
	}})
}

func TestPlanRemovedApp(t *testing.T) {
	front := reeve.Network{}
	old := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", onNetwork("front")), "db": svc("db:1")})
	web := old.ctr("c1", "web", reeve.StatusRunning)
	db := old.ctr("c2", "db", reeve.StatusExited)
	noRelease := device()
	noRelease.Apps[appA] = reeve.App{ID: 7, Name: "a", Releases: map[string]reeve.Release{}}
	nets := []reeve.NetworkState{network(appA, "front", front)}
	runPlanCases(t, []planCase{{
		name:   "app left: its containers are killed, its network waits for them",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, db}, Networks: nets, Images: imgs("web:1", "db:1")},
		target: device(),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(db), killStep(web)},
	}, {
		name:   "app left, no lock: take it",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, db}, Networks: nets, Images: imgs("web:1", "db:1")},
		target: device(),
		want:   []Step{takeLockStep(appA, "db", "web")},
	}, {
		name:   "containers gone: network removed, lock released",
		cur:    reeve.Snapshot{Networks: nets, Images: imgs("web:1", "db:1")},
		target: device(),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{removeNetStep(appA, "front"), releaseLockStep(appA)},
	}, {
		name:   "app without a release: same",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, db}, Networks: nets, Images: imgs("web:1", "db:1")},
		target: noRelease,
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(db), killStep(web)},
	}, {
		name:   "created container of an app that left: removed without a lock",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusCreated)}, Images: imgs("web:1")},
		target: device(),
		want:   []Step{removeStep(old.ctr("c1", "web", reeve.StatusCreated))},
	}})
}

func TestPlanLocks(t *testing.T) {
	kill := strategy(reeve.StrategyKillThenDownload)
	old := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", kill), "api": svc("api:1")})
	a := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", kill), "api": svc("api:1")})
	web := old.ctr("c1", "web", reeve.StatusRunning)
	api := a.ctr("c2", "api", reeve.StatusRunning)
	cur := reeve.Snapshot{Containers: []reeve.ServiceState{web, api}, Images: imgs("web:1", "web:2", "api:1")}
	curMissing := reeve.Snapshot{Containers: []reeve.ServiceState{web, api}, Images: imgs("web:1", "api:1")}
	user := map[string]LockState{appA: {HeldByUser: true}}
	b := mkApp(appB, newCommit, map[string]reeve.Service{"x": svc("x:1")})
	runPlanCases(t, []planCase{{
		name:   "not held: take it, nothing destructive yet",
		cur:    cur,
		target: device(a),
		want:   []Step{takeLockStep(appA, "api", "web")},
	}, {
		name:   "not held: fetches go along",
		cur:    curMissing,
		target: device(a),
		want:   []Step{fetchStep(appA, "web", "web:2"), takeLockStep(appA, "api", "web")},
	}, {
		name:   "held by the agent: go",
		cur:    cur,
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(web)},
	}, {
		name:   "held by a service: wait",
		cur:    cur,
		target: device(a),
		env:    Env{Locks: user},
		want:   []Step{noopStep(appA, "", "update locked by a service of app aaaa-app")},
	}, {
		name:   "held by a service: fetch still proceeds",
		cur:    curMissing,
		target: device(a),
		env:    Env{Locks: user},
		want:   []Step{fetchStep(appA, "web", "web:2")},
	}, {
		name: "held by a service: what is not destructive still goes",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{web, old.ctr("c2", "api", reeve.StatusRunning)},
			Images: imgs("web:1", "web:2", "api:1")},
		target: device(a),
		env:    Env{Locks: user},
		want:   []Step{updateMetadataStep(a, old.ctr("c2", "api", reeve.StatusRunning))},
	}, {
		name: "not held: only takeLock",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{web, old.ctr("c2", "api", reeve.StatusRunning)},
			Images: imgs("web:1", "web:2", "api:1")},
		target: device(a),
		want:   []Step{takeLockStep(appA, "api", "web")},
	}, {
		name:   "held by a service, forced: take it",
		cur:    cur,
		target: device(a),
		env:    Env{Locks: user, Force: true},
		want:   []Step{takeLockStep(appA, "api", "web")},
	}, {
		name:   "held by a service and the agent, forced: go",
		cur:    cur,
		target: device(a),
		env:    Env{Locks: map[string]LockState{appA: {HeldByUser: true, HeldByAgent: true}}, Force: true},
		want:   []Step{killStep(web)},
	}, {
		name:   "nothing destructive left: released",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{api}, Images: imgs("web:2", "api:1")},
		target: device(a),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{startStep(a, "web"), releaseLockStep(appA)},
	}, {
		name:   "fresh install needs no lock, even with a service's lock held",
		cur:    reeve.Snapshot{Images: imgs("web:2", "api:1")},
		target: device(a),
		env:    Env{Locks: user},
		want:   []Step{startStep(a, "api"), startStep(a, "web")},
	}, {
		name:   "a locked app does not hold back another",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web, api}, Images: imgs("web:1", "web:2", "api:1", "x:1")},
		target: device(a, b),
		env:    Env{Locks: user},
		want:   []Step{startStep(b, "x")},
	}, {
		name:   "agent lock on an app that is gone: released",
		target: device(),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{releaseLockStep(appA)},
	}})
}

func TestPlanImageCleanup(t *testing.T) {
	a := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2")})
	web := a.ctr("c1", "web", reeve.StatusRunning)
	bJob := mkApp(appB, oldCommit, map[string]reeve.Service{"x": svc("web:1", restart("no"))})
	both := reeve.ImageState{ID: "sha256:x", Refs: []string{ref("web:2"), ref("web:latest")}}
	runPlanCases(t, []planCase{{
		name:   "converged: owned unused images go",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web}, Images: imgs("web:1", "web:2", "db:1")},
		target: device(a),
		env:    Env{OwnedImages: owned("web:1", "web:2", "db:1")},
		want:   []Step{{Action: ActionRemoveImage, Image: ref("db:1")}, {Action: ActionRemoveImage, Image: ref("web:1")}},
	}, {
		name:   "images not ours are kept",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web}, Images: imgs("web:1", "web:2")},
		target: device(a),
		env:    Env{OwnedImages: owned("web:2")},
		want:   nil,
	}, {
		name: "an image a container uses is kept",
		cur: reeve.Snapshot{Containers: []reeve.ServiceState{web, bJob.ctr("c9", "x", reeve.StatusExited)},
			Images: imgs("web:1", "web:2")},
		target: device(a, bJob),
		env:    Env{OwnedImages: owned("web:1", "web:2")},
		want:   nil,
	}, {
		name:   "not converged: no cleanup yet",
		cur:    reeve.Snapshot{Images: imgs("web:1", "web:2")},
		target: device(a),
		env:    Env{OwnedImages: owned("web:1", "web:2")},
		want:   []Step{startStep(a, "web")},
	}, {
		name:   "waiting: no cleanup yet",
		cur:    reeve.Snapshot{Images: imgs("web:1")},
		target: device(a),
		env:    Env{OwnedImages: owned("web:1", "web:2"), InFlight: map[string]bool{ref("web:2"): true}},
		want:   []Step{noopStep(appA, "web", "downloading "+ref("web:2"))},
	}, {
		name:   "an image is kept when any of its refs is used",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{web}, Images: []reeve.ImageState{both}},
		target: device(a),
		env:    Env{OwnedImages: owned("web:2", "web:latest")},
		want:   nil,
	}, {
		name:   "intermediate target (an app restarting): every image is kept",
		cur:    reeve.Snapshot{Images: imgs("web:1", "web:2")},
		target: device(),
		env:    Env{OwnedImages: owned("web:1", "web:2"), KeepImages: true},
		want:   nil,
	}, {
		name:   "intermediate target: no room is made by removing images either",
		cur:    reeve.Snapshot{Images: imgs("web:1")},
		target: device(a),
		env:    Env{OwnedImages: owned("web:1"), KeepImages: true},
		want:   []Step{{Action: ActionFetch, AppUUID: appA, Service: "web", Image: ref("web:2")}},
	}})
}

func TestPlanConverged(t *testing.T) {
	front := reeve.Network{}
	data := reeve.Volume{}
	a := mkApp(appA, newCommit, map[string]reeve.Service{
		"web":     svc("web:1", onNetwork("front"), mountVolume("data", "/d")),
		"migrate": svc("migrate:1", restart("no")),
		"off":     svc("off:1", notRunning),
	}).withNetworks(map[string]reeve.Network{"front": front}).withVolumes(map[string]reeve.Volume{"data": data})
	runPlanCases(t, []planCase{{
		name: "nothing at all",
		want: nil,
	}, {
		name: "everything in place",
		cur: reeve.Snapshot{
			Containers: []reeve.ServiceState{
				a.ctr("c1", "web", reeve.StatusRunning),
				a.ctr("c2", "migrate", reeve.StatusExited),
				a.ctr("c3", "off", reeve.StatusExited),
			},
			Networks: []reeve.NetworkState{network(appA, "front", front)},
			Volumes:  []reeve.VolumeState{volume(appA, "data", data)},
			Images:   imgs("web:1", "migrate:1", "off:1"),
		},
		target: device(a),
		env:    Env{OwnedImages: owned("web:1", "migrate:1", "off:1")},
		want:   nil,
	}, {
		name: "paused and restarting containers are left to the engine",
		cur: reeve.Snapshot{
			Containers: []reeve.ServiceState{
				a.ctr("c1", "web", reeve.StatusRestarting),
				a.ctr("c2", "migrate", reeve.StatusPaused),
			},
			Networks: []reeve.NetworkState{network(appA, "front", front)},
			Volumes:  []reeve.VolumeState{volume(appA, "data", data)},
			Images:   imgs("web:1", "migrate:1", "off:1"),
		},
		target: device(a),
		want:   nil,
	}})
}

func TestPlanWaitsWithOneNoop(t *testing.T) {
	a := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:1"), "api": svc("api:1")})
	b := mkApp(appB, newCommit, map[string]reeve.Service{
		"db":  svc("db:1", restart("no")),
		"web": svc("web:1", dependsOn("db", "")),
	})
	runPlanCases(t, []planCase{{
		name:   "several waits: one noop, the first",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{b.ctr("c1", "db", reeve.StatusExited)}, Images: imgs("db:1")},
		target: device(a, b),
		env:    Env{InFlight: map[string]bool{ref("web:1"): true, ref("api:1"): true}},
		want:   []Step{noopStep(appA, "api", "downloading "+ref("api:1"))},
	}, {
		name:   "a waiting app does not hold back another",
		cur:    reeve.Snapshot{Images: imgs("db:1", "web:1")},
		target: device(a, b),
		env:    Env{InFlight: map[string]bool{ref("api:1"): true}},
		want:   []Step{startStep(b, "db")},
	}})
}

func TestPlanUnchangedServiceUntouched(t *testing.T) {
	old := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1"), "api": svc("api:1"), "db": svc("db:1")})
	envChanged := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", env("MODE", "fast")), "api": svc("api:1"), "db": svc("db:1")})
	newRelease := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2"), "api": svc("api:1"), "db": svc("db:1")})
	cs := []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusRunning), old.ctr("c2", "api", reeve.StatusRunning), old.ctr("c3", "db", reeve.StatusRunning)}
	runPlanCases(t, []planCase{{
		name:   "one service's environment changed: only it is killed",
		cur:    reeve.Snapshot{Containers: cs, Images: imgs("web:1", "api:1", "db:1")},
		target: device(envChanged),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(cs[0])},
	}, {
		name:   "then only it starts",
		cur:    reeve.Snapshot{Containers: cs[1:], Images: imgs("web:1", "api:1", "db:1")},
		target: device(envChanged),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{startStep(envChanged, "web"), releaseLockStep(appA)},
	}, {
		name:   "new release changing one service: the others only move to it",
		cur:    reeve.Snapshot{Containers: cs, Images: imgs("web:1", "web:2", "api:1", "db:1")},
		target: device(newRelease),
		env:    Env{Locks: heldByAgent(appA)},
		want:   []Step{killStep(cs[0]), updateMetadataStep(newRelease, cs[1]), updateMetadataStep(newRelease, cs[2])},
	}})
}

func TestPlanFailedFetchKeepsOldRunning(t *testing.T) {
	failed := Env{Locks: heldByAgent(appA), FetchFailed: map[string]string{ref("web:2"): "pull access denied"}}
	for _, st := range []string{reeve.StrategyDownloadThenKill, reeve.StrategyKillThenDownload, reeve.StrategyDeleteThenDownload, reeve.StrategyHandOver} {
		t.Run(st, func(t *testing.T) {
			old := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", strategy(st)), "api": svc("api:1", strategy(st))})
			a := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", strategy(st)), "api": svc("api:2", strategy(st))})
			cs := []reeve.ServiceState{old.ctr("c1", "web", reeve.StatusRunning), old.ctr("c2", "api", reeve.StatusRunning)}
			runPlanCases(t, []planCase{{
				name:   "image cannot be fetched: retried, old kept",
				cur:    reeve.Snapshot{Containers: cs, Images: imgs("web:1", "api:1", "api:2")},
				target: device(a),
				env:    failed,
				want:   []Step{fetchStep(appA, "web", "web:2"), releaseLockStep(appA)},
			}, {
				name:   "another service's image cannot be fetched: old kept",
				cur:    reeve.Snapshot{Containers: cs, Images: imgs("web:1", "api:1")},
				target: device(a),
				env:    failed,
				want:   []Step{fetchStep(appA, "api", "api:2"), fetchStep(appA, "web", "web:2"), releaseLockStep(appA)},
			}, {
				name: "retry not due yet (in flight): wait, old kept",
				cur:  reeve.Snapshot{Containers: cs, Images: imgs("web:1", "api:1", "api:2")},
				env: Env{FetchFailed: failed.FetchFailed,
					InFlight: map[string]bool{ref("web:2"): true}},
				target: device(a),
				want:   []Step{noopStep(appA, "web", "downloading "+ref("web:2"))},
			}})
		})
	}
}

// A dependency meant to be stopped is no reason to wait: waiting would be for
// ever.
func TestPlanDependsOnStoppedService(t *testing.T) {
	for _, cond := range []string{"", reeve.ConditionStarted, reeve.ConditionHealthy} {
		a := mkApp(appA, newCommit, map[string]reeve.Service{
			"db":  svc("db:1", notRunning),
			"web": svc("web:1", dependsOn("db", cond)),
		})
		runPlanCases(t, []planCase{{
			name:   "dependency running=false (" + cond + "): start",
			cur:    reeve.Snapshot{Images: imgs("db:1", "web:1")},
			target: device(a),
			want:   []Step{startStep(a, "web")},
		}})
	}
}

// A hand-over whose new container crash-loops ends at the deadline counted
// from the new container's creation (the engine moves StartedAt on every
// restart), so that it never holds the app's lock for ever.
func TestPlanHandoverDeadlineFromCreation(t *testing.T) {
	ho := strategy(reeve.StrategyHandOver)
	oldA := mkApp(appA, oldCommit, map[string]reeve.Service{"web": svc("web:1", ho)})
	newA := mkApp(appA, newCommit, map[string]reeve.Service{"web": svc("web:2", ho)})
	oldWeb := oldA.ctr("c1", "web", reeve.StatusRunning)
	createdAt := t0.Add(time.Minute)
	deadline := createdAt.Add(reeve.DefaultHandoverTimeout)
	restarted := func(c *reeve.ServiceState) { c.StartedAt = deadline.Add(time.Minute) }
	crashing := newA.ctr("c2", "web", reeve.StatusRestarting, created(createdAt), restarted)
	runPlanCases(t, []planCase{{
		name:   "new one crash-looping before the deadline: wait",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, crashing}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		env:    Env{Now: createdAt.Add(time.Second), Locks: heldByAgent(appA)},
		want:   []Step{noopStep(appA, "web", "waiting for the new web to run")},
	}, {
		name:   "new one crash-looping past the deadline: end the hand-over",
		cur:    reeve.Snapshot{Containers: []reeve.ServiceState{oldWeb, crashing}, Images: imgs("web:1", "web:2")},
		target: device(newA),
		env:    Env{Now: deadline.Add(2 * time.Minute), Locks: heldByAgent(appA)},
		want:   []Step{handoverStep(newA, oldWeb, deadline)},
	}})
}
