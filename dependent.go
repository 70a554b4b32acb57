package reeve

import (
	"maps"
	"sort"
)

// Dependent devices are devices that cannot run an agent (microcontrollers
// behind a gateway). The gateway's agent carries them, and its target state
// carries theirs:
//
//   - the gateway's own entry lists each dependent app (class "dependent")
//     it carries, with the release whose image holds the firmware under
//     /assets, and the dependent fleet's config;
//   - each dependent device it carries has its own entry, keyed by its
//     UUID, with its name, config and exactly one app: its dependent app,
//     with the release it should run and its service's environment.

// DependentApp is one dependent app as a gateway's agent keeps it: what the
// target says of the app and of each of its devices.
type DependentApp struct {
	UUID      string            `json:"uuid"`
	ID        int64             `json:"id"`
	Name      string            `json:"name"`
	Commit    string            `json:"commit,omitempty"` // "" while the fleet has no release
	ReleaseID int64             `json:"release_id,omitempty"`
	Image     string            `json:"image,omitempty"`
	Config    map[string]string `json:"config,omitempty"`
	// Devices are keyed by device UUID.
	Devices map[string]DependentTarget `json:"devices"`
}

// DependentTarget is what one dependent device should run.
type DependentTarget struct {
	Name        string            `json:"name"`
	Commit      string            `json:"commit,omitempty"`
	ReleaseID   int64             `json:"release_id,omitempty"`
	Image       string            `json:"image,omitempty"` // the release's image, holding the firmware under /assets
	Environment map[string]string `json:"environment,omitempty"`
	Config      map[string]string `json:"config,omitempty"`
}

// Hash identifies the app's whole target: it changes when anything in it
// does.
func (a DependentApp) Hash() string { return hashJSON(a) }

// Images lists the distinct images the app's target needs: its release's
// and those of devices pinned to another release.
func (a DependentApp) Images() []string {
	seen := map[string]bool{}
	var out []string
	add := func(img string) {
		if img != "" && !seen[img] {
			seen[img] = true
			out = append(out, img)
		}
	}
	add(a.Image)
	for _, uuid := range sortedKeys(a.Devices) {
		add(a.Devices[uuid].Image)
	}
	return out
}

// Hash identifies what a dependent device should run: a hook is due when
// it differs from what the device runs and from what its gateway last
// acknowledged.
func (t DependentTarget) Hash() string {
	return hashJSON(struct {
		Commit      string
		Environment map[string]string
		Config      map[string]string
	}{t.Commit, nonNil(t.Environment), nonNil(t.Config)})
}

// DependentApps returns the dependent apps the gateway's target carries,
// keyed by app UUID, each with its devices' targets. Call it on a state
// that passed CheckDependents.
func (ts TargetState) DependentApps(gateway string) map[string]DependentApp {
	out := map[string]DependentApp{}
	for uuid, app := range ts[gateway].Apps {
		if app.Class != ClassDependent {
			continue
		}
		da := DependentApp{UUID: uuid, ID: app.ID, Name: app.Name, Config: maps.Clone(app.Config), Devices: map[string]DependentTarget{}}
		if commit, rel, ok := app.Release(); ok {
			da.Commit, da.ReleaseID = commit, rel.ID
			for _, svc := range rel.Services {
				da.Image = svc.Image
			}
		}
		out[uuid] = da
	}
	for dev, dt := range ts {
		if dev == gateway {
			continue
		}
		for appUUID, app := range dt.Apps {
			da, ok := out[appUUID]
			if !ok {
				continue
			}
			t := DependentTarget{Name: dt.Name, Config: maps.Clone(dt.Config)}
			if commit, rel, ok := app.Release(); ok {
				t.Commit, t.ReleaseID = commit, rel.ID
				for _, svc := range rel.Services {
					t.Image, t.Environment = svc.Image, maps.Clone(svc.Environment)
				}
			}
			da.Devices[dev] = t
		}
	}
	return out
}

// CheckDependents checks the entries of ts other than the gateway's own:
// each must be a dependent device with exactly one app, a dependent app
// the gateway's entry lists.
func (ts TargetState) CheckDependents(gateway string) error {
	var p problems
	own, ok := ts[gateway]
	if !ok {
		p.add("", "the target state has no entry for this device (%s)", gateway)
		return p.err()
	}
	devs := make([]string, 0, len(ts))
	for uuid := range ts {
		if uuid != gateway {
			devs = append(devs, uuid)
		}
	}
	sort.Strings(devs)
	for _, dev := range devs {
		dt := ts[dev]
		if len(dt.Apps) != 1 {
			p.add(dev, "this device's UUID is %s; another entry must be a dependent device with exactly one dependent app (found %d apps)", gateway, len(dt.Apps))
			continue
		}
		for appUUID, app := range dt.Apps {
			at := join(dev, "apps", appUUID)
			if app.Class != ClassDependent {
				p.add(join(at, "class"), "this device's UUID is %s; another entry must be a dependent device, whose app has class %q (found %q)", gateway, ClassDependent, app.Class)
			} else if own.Apps[appUUID].Class != ClassDependent {
				p.add(at, "app %s is not a dependent app of this device (%s): list it in its entry with class %q", appUUID, gateway, ClassDependent)
			}
		}
	}
	return p.err()
}
