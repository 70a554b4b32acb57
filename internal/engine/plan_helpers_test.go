package engine

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"reeve.dev/reeve"
)

// Fixtures shared by the planner's tests.

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	appA      = "aaaa"
	appB      = "bbbb"
	oldCommit = "c0ffee0"
	newCommit = "c0ffee1"
)

// ref normalizes an image reference as the runtime reports it.
func ref(image string) string {
	r, err := reeve.NormalizeImage(image)
	if err != nil {
		panic(err)
	}
	return r
}

// svc is a service that runs image.
func svc(image string, opts ...func(*reeve.Service)) reeve.Service {
	s := reeve.Service{Image: image, Running: true}
	for _, o := range opts {
		o(&s)
	}
	return s
}

func label(k, v string) func(*reeve.Service) {
	return func(s *reeve.Service) {
		s.Labels = maps.Clone(s.Labels)
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
	}
}

func strategy(st string) func(*reeve.Service) { return label(reeve.LabelUpdateStrategy, st) }

func env(k, v string) func(*reeve.Service) {
	return func(s *reeve.Service) {
		s.Environment = maps.Clone(s.Environment)
		if s.Environment == nil {
			s.Environment = map[string]string{}
		}
		s.Environment[k] = v
	}
}

func notRunning(s *reeve.Service) { s.Running = false }

func restart(p string) func(*reeve.Service) {
	return func(s *reeve.Service) { s.Composition.Restart = p }
}

func dependsOn(name, cond string) func(*reeve.Service) {
	return func(s *reeve.Service) {
		s.Composition.DependsOn = maps.Clone(s.Composition.DependsOn)
		if s.Composition.DependsOn == nil {
			s.Composition.DependsOn = map[string]reeve.Dependency{}
		}
		s.Composition.DependsOn[name] = reeve.Dependency{Condition: cond}
	}
}

func onNetwork(n string) func(*reeve.Service) {
	return func(s *reeve.Service) {
		s.Composition.Networks = maps.Clone(s.Composition.Networks)
		if s.Composition.Networks == nil {
			s.Composition.Networks = map[string]reeve.ServiceNetwork{}
		}
		s.Composition.Networks[n] = reeve.ServiceNetwork{}
	}
}

func mountVolume(v, target string) func(*reeve.Service) {
	return func(s *reeve.Service) {
		s.Composition.Volumes = append(slices.Clone(s.Composition.Volumes), reeve.Mount{Type: reeve.MountVolume, Source: v, Target: target})
	}
}

func healthcheck(s *reeve.Service) {
	s.Composition.Healthcheck = &reeve.Healthcheck{Test: []string{"CMD", "true"}}
}

// tapp is one app of a test target with its one release.
type tapp struct {
	uuid   string
	name   string
	id     int64
	commit string
	rel    reeve.Release
}

func mkApp(uuid, commit string, svcs map[string]reeve.Service) tapp {
	return tapp{uuid: uuid, name: uuid + "-app", id: 7, commit: commit, rel: reeve.Release{ID: 70, Services: svcs}}
}

func (a tapp) withNetworks(n map[string]reeve.Network) tapp { a.rel.Networks = n; return a }
func (a tapp) withVolumes(v map[string]reeve.Volume) tapp   { a.rel.Volumes = v; return a }

func (a tapp) app() reeve.App {
	return reeve.App{ID: a.id, Name: a.name, Releases: map[string]reeve.Release{a.commit: a.rel}}
}

func device(apps ...tapp) reeve.DeviceTarget {
	d := reeve.DeviceTarget{Name: "dev", Apps: map[string]reeve.App{}}
	for _, a := range apps {
		d.Apps[a.uuid] = a.app()
	}
	return d
}

// spec is what the planner puts in Step.Target for a service of a.
func (a tapp) spec(name string) *reeve.ServiceSpec {
	return &reeve.ServiceSpec{AppUUID: a.uuid, AppID: a.id, AppName: a.name, Commit: a.commit,
		ReleaseID: a.rel.ID, ServiceName: name, Service: a.rel.Services[name]}
}

// ctr is a container of a's service name made from its target definition at
// a's commit.
func (a tapp) ctr(id, name, status string, opts ...func(*reeve.ServiceState)) reeve.ServiceState {
	return container(id, a.uuid, name, a.commit, a.rel.Services[name], status, opts...)
}

// container is a container of service name of app made from s at commit.
func container(id, app, name, commit string, s reeve.Service, status string, opts ...func(*reeve.ServiceState)) reeve.ServiceState {
	c := reeve.ServiceState{
		ID: id, AppUUID: app, AppID: 7, ServiceName: name, Commit: commit,
		Image: ref(s.Image), ConfigHash: s.ConfigHash(), Status: status,
		Labels: s.Labels, CreatedAt: t0, StartedAt: t0,
		Networks: slices.Sorted(maps.Keys(s.Composition.Networks)),
	}
	for _, m := range s.Composition.Volumes {
		if m.Type == reeve.MountVolume && m.Source != "" {
			c.Volumes = append(c.Volumes, m.Source)
		}
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

func created(at time.Time) func(*reeve.ServiceState) {
	return func(c *reeve.ServiceState) { c.CreatedAt = at; c.StartedAt = at }
}

func health(h string) func(*reeve.ServiceState) {
	return func(c *reeve.ServiceState) { c.Health = h }
}

func exitCode(code int) func(*reeve.ServiceState) {
	return func(c *reeve.ServiceState) { c.ExitCode = code }
}

func imgs(images ...string) []reeve.ImageState {
	var out []reeve.ImageState
	for _, i := range images {
		out = append(out, reeve.ImageState{ID: "sha256:" + i, Refs: []string{ref(i)}})
	}
	return out
}

func owned(images ...string) map[string]bool {
	m := map[string]bool{}
	for _, i := range images {
		m[ref(i)] = true
	}
	return m
}

func heldByAgent(apps ...string) map[string]LockState {
	m := map[string]LockState{}
	for _, a := range apps {
		m[a] = LockState{HeldByAgent: true}
	}
	return m
}

func network(app, name string, n reeve.Network) reeve.NetworkState {
	return reeve.NetworkState{ID: "net-" + name, AppUUID: app, Name: name, ConfigHash: n.ConfigHash()}
}

func volume(app, name string, v reeve.Volume) reeve.VolumeState {
	return reeve.VolumeState{AppUUID: app, Name: name, ConfigHash: v.ConfigHash()}
}

// Expected steps.

func fetchStep(app, service, image string) Step {
	return Step{Action: ActionFetch, AppUUID: app, Service: service, Image: ref(image)}
}

func killStep(c reeve.ServiceState) Step {
	return Step{Action: ActionKill, AppUUID: c.AppUUID, Service: c.ServiceName, Current: &c}
}

func stopStep(c reeve.ServiceState) Step {
	return Step{Action: ActionStop, AppUUID: c.AppUUID, Service: c.ServiceName, Current: &c}
}

func removeStep(c reeve.ServiceState) Step {
	return Step{Action: ActionRemove, AppUUID: c.AppUUID, Service: c.ServiceName, Current: &c}
}

func startStep(a tapp, name string) Step {
	return Step{Action: ActionStart, AppUUID: a.uuid, Service: name, Target: a.spec(name)}
}

func startCurStep(a tapp, c reeve.ServiceState) Step {
	return Step{Action: ActionStart, AppUUID: a.uuid, Service: c.ServiceName, Current: &c, Target: a.spec(c.ServiceName)}
}

func updateMetadataStep(a tapp, c reeve.ServiceState) Step {
	return Step{Action: ActionUpdateMetadata, AppUUID: a.uuid, Service: c.ServiceName, Current: &c, Target: a.spec(c.ServiceName)}
}

func handoverStep(a tapp, old reeve.ServiceState, deadline time.Time) Step {
	return Step{Action: ActionHandover, AppUUID: a.uuid, Service: old.ServiceName, Current: &old,
		Target: a.spec(old.ServiceName), Deadline: deadline}
}

func createNetworkStep(app, name string, n reeve.Network) Step {
	return Step{Action: ActionCreateNetwork, AppUUID: app, Network: &reeve.NetworkSpec{AppUUID: app, Name: name, Network: n}}
}

func removeNetStep(app, name string) Step {
	return Step{Action: ActionRemoveNetwork, AppUUID: app, Network: &reeve.NetworkSpec{AppUUID: app, Name: name}}
}

func createVolumeStep(app, name string, v reeve.Volume, replace bool) Step {
	return Step{Action: ActionCreateVolume, AppUUID: app, Volume: &reeve.VolumeSpec{AppUUID: app, Name: name, Volume: v}, Replace: replace}
}

func removeImageStep(app, service, image string) Step {
	return Step{Action: ActionRemoveImage, AppUUID: app, Service: service, Image: ref(image)}
}

func takeLockStep(app string, services ...string) Step {
	return Step{Action: ActionTakeLock, AppUUID: app, Services: services}
}

func releaseLockStep(app string) Step {
	return Step{Action: ActionReleaseLock, AppUUID: app}
}

func noopStep(app, service, reason string) Step {
	return Step{Action: ActionNoop, AppUUID: app, Service: service, Reason: reason}
}

// planCase is one row of a rule's table.
type planCase struct {
	name   string
	cur    reeve.Snapshot
	target reeve.DeviceTarget
	env    Env
	want   []Step
}

func runPlanCases(t *testing.T, cases []planCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.env
			if e.Now.IsZero() {
				e.Now = t0.Add(time.Second)
			}
			got := Plan(tc.cur, tc.target, e)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Plan() mismatch (-want +got):\n%s", diff)
			}
			checkBatch(t, tc.cur, tc.target, got)
			// Deterministic: the same input gives the same output.
			if again := Plan(tc.cur, tc.target, e); !cmp.Equal(got, again) {
				t.Errorf("Plan() is not deterministic:\n%v\n%v", got, again)
			}
		})
	}
}

// checkBatch checks what holds for every batch: no two steps on one
// container, no kill and start of one service, a noop only alone, and a new
// container only once the service's old ones are gone (except hand-over).
func checkBatch(t *testing.T, cur reeve.Snapshot, target reeve.DeviceTarget, steps []Step) {
	t.Helper()
	onContainer := map[string]Step{}
	killed := map[string]bool{}
	started := map[string]bool{}
	for _, s := range steps {
		if s.Action == ActionNoop && len(steps) > 1 {
			t.Errorf("noop %v next to other steps: %v", s, steps)
		}
		if s.Current != nil {
			if prev, ok := onContainer[s.Current.ID]; ok {
				t.Errorf("two steps on container %s: %v and %v", s.Current.ID, prev, s)
			}
			onContainer[s.Current.ID] = s
		}
		key := s.AppUUID + "/" + s.Service
		switch s.Action {
		case ActionKill, ActionHandover:
			killed[key] = true
		case ActionStart:
			started[key] = true
			if s.Current == nil {
				for _, c := range cur.Containers {
					if c.AppUUID != s.AppUUID || c.ServiceName != s.Service {
						continue
					}
					if s.Target.Service.Strategy() != reeve.StrategyHandOver || !c.IsRunning() {
						t.Errorf("start of a new %s while container %s (%s) is there", key, c.ID, c.Status)
					}
				}
			}
		case ActionRemoveVolume:
			t.Errorf("the planner removed volume %v", s.Volume)
		}
	}
	for k := range killed {
		if started[k] {
			t.Errorf("kill and start of %s in one batch: %v", k, steps)
		}
	}
}
