package localapi

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"

	"reeve.dev/reeve"
)

// LocalApp returns the app UUID and app that local mode uses for a release
// named name. The UUID and ID are derived from the name, so applying a new
// version of the same compose project updates the same app.
func LocalApp(name string, rel reeve.Release, commit string) (string, reeve.App) {
	sum := sha256.Sum256([]byte("reeve-local-app/" + name))
	uuid := hex.EncodeToString(sum[:16])
	id := int64(binary.BigEndian.Uint32(sum[16:20])&0x7fffffff) | 1
	return uuid, reeve.App{
		ID:       id,
		Name:     name,
		Class:    reeve.ClassFleet,
		Releases: map[string]reeve.Release{commit: rel},
	}
}

// WithApp returns a copy of the device's target with app set (added or
// replaced), other apps kept.
func WithApp(ts reeve.TargetState, deviceUUID, deviceName, appUUID string, app reeve.App) reeve.TargetState {
	dev := ts[deviceUUID]
	out := reeve.DeviceTarget{Name: dev.Name, Config: dev.Config, Apps: map[string]reeve.App{}}
	if out.Name == "" {
		out.Name = deviceName
	}
	for k, v := range dev.Apps {
		out.Apps[k] = v
	}
	out.Apps[appUUID] = app
	return reeve.TargetState{deviceUUID: out}
}

// WithoutApp returns a copy of the device's target without the app.
func WithoutApp(ts reeve.TargetState, deviceUUID, appUUID string) reeve.TargetState {
	dev := ts[deviceUUID]
	out := reeve.DeviceTarget{Name: dev.Name, Config: dev.Config, Apps: map[string]reeve.App{}}
	for k, v := range dev.Apps {
		if k != appUUID {
			out.Apps[k] = v
		}
	}
	return reeve.TargetState{deviceUUID: out}
}
