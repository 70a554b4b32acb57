package gateway

import (
	"encoding/json"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// EnmStatus is the body of GET and PUT /v1/enm/status.
type EnmStatus struct {
	CurrentStatus string `json:"currentStatus,omitempty"`
	TargetStatus  string `json:"targetStatus"`
}

// DeviceView is a device as GET /v1/devices shows it.
type DeviceView struct {
	UUID         string            `json:"uuid"`
	LocalID      string            `json:"local_id"`
	AppID        int64             `json:"appId"`
	Name         string            `json:"name"`
	Status       string            `json:"status"`
	IsOnline     bool              `json:"is_online"`
	Commit       string            `json:"commit"`
	TargetCommit string            `json:"targetCommit"`
	Info         map[string]string `json:"info,omitempty"`
	LastError    string            `json:"last_error,omitempty"`
}

func (g *Gateway) handler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("GET /v1/enm/status", g.getStatus)
	m.HandleFunc("PUT /v1/enm/status", g.putStatus)
	m.HandleFunc("GET /v1/devices", g.listDevices)
	m.HandleFunc("GET /v1/devices/{id}", g.getDevice)
	m.HandleFunc("PUT /v1/devices/{uuid}", g.hook)
	m.HandleFunc("DELETE /v1/devices/{uuid}", g.deleteHook)
	m.HandleFunc("PUT /v1/devices/{uuid}/restart", g.restart)
	m.HandleFunc("GET /v1/firmware/{app}/{commit}/{file...}", g.firmware)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, g.log, reeve.Errorf(reeve.CodeNotFound, "no route %s %s: see docs/gateway.md", r.Method, r.URL.Path))
	})
	return m
}

func (g *Gateway) getStatus(w http.ResponseWriter, _ *http.Request) {
	g.mu.Lock()
	st := EnmStatus{CurrentStatus: g.current, TargetStatus: g.target}
	g.mu.Unlock()
	httpx.WriteJSON(w, http.StatusOK, st)
}

func (g *Gateway) putStatus(w http.ResponseWriter, r *http.Request) {
	var body EnmStatus
	if err := httpx.DecodeJSON(w, r, 4<<10, &body); err != nil {
		httpx.WriteError(w, g.log, err)
		return
	}
	if body.TargetStatus != Running && body.TargetStatus != Paused {
		httpx.WriteError(w, g.log, reeve.Errorf(reeve.CodeInvalid, "targetStatus must be %q or %q, not %q", Running, Paused, body.TargetStatus))
		return
	}
	if err := g.st.put(r.Context(), "target_status", body.TargetStatus); err != nil {
		httpx.WriteError(w, g.log, err)
		return
	}
	g.mu.Lock()
	g.target = body.TargetStatus
	st := EnmStatus{CurrentStatus: g.current, TargetStatus: g.target}
	g.mu.Unlock()
	g.poke()
	httpx.WriteJSON(w, http.StatusOK, st)
}

// views lists the devices this gateway drives, as the agent and the last
// scan know them.
func (g *Gateway) views(r *http.Request) ([]DeviceView, error) {
	devs, err := g.agent.DependentDevices(r.Context())
	if err != nil {
		return nil, reeve.Errorf(reeve.CodeUnavailable, "%v", err)
	}
	recs, err := g.st.records(r.Context())
	if err != nil {
		return nil, err
	}
	out := []DeviceView{}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, d := range devs {
		rec, ok := recs[d.UUID]
		if !ok {
			continue
		}
		out = append(out, DeviceView{UUID: d.UUID, LocalID: d.LocalID, AppID: d.AppID, Name: d.Name, Status: d.Status,
			IsOnline: d.IsOnline, Commit: d.Commit, TargetCommit: d.TargetCommit, Info: g.found[d.UUID].Info, LastError: rec.LastError})
	}
	return out, nil
}

func (g *Gateway) listDevices(w http.ResponseWriter, r *http.Request) {
	vs, err := g.views(r)
	if err != nil {
		httpx.WriteError(w, g.log, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, vs)
}

// getDevice finds a device by its fleet UUID or its local ID.
func (g *Gateway) getDevice(w http.ResponseWriter, r *http.Request) {
	vs, err := g.views(r)
	if err != nil {
		httpx.WriteError(w, g.log, err)
		return
	}
	id := r.PathValue("id")
	for _, v := range vs {
		if v.UUID == id || v.LocalID == id {
			httpx.WriteJSON(w, http.StatusOK, v)
			return
		}
	}
	httpx.WriteError(w, g.log, reeve.Errorf(reeve.CodeNotFound, "no device %q: give a device's UUID or its local ID (GET /v1/devices lists them)", id))
}

// hook receives the agent's word that a device's target changed; the next
// round (started now) reads the target from the agent.
func (g *Gateway) hook(w http.ResponseWriter, r *http.Request) {
	var body struct {
		AppID       json.Number       `json:"appId"`
		Commit      string            `json:"commit"`
		Environment map[string]string `json:"environment"`
		Config      map[string]string `json:"config"`
	}
	if err := httpx.DecodeJSON(w, r, 1<<20, &body); err != nil {
		httpx.WriteError(w, g.log, err)
		return
	}
	g.log.Info("hook: a device's target changed", "device", r.PathValue("uuid"), "commit", body.Commit)
	g.poke()
	w.WriteHeader(http.StatusAccepted)
}

// deleteHook forgets a device removed from the fleet.
func (g *Gateway) deleteHook(w http.ResponseWriter, r *http.Request) {
	uuid := r.PathValue("uuid")
	g.mu.Lock()
	if cancel, ok := g.updating[uuid]; ok {
		cancel()
	}
	delete(g.found, uuid)
	g.mu.Unlock()
	rec, ok, err := g.st.record(r.Context(), uuid)
	if err == nil && ok {
		// Still on its link: not provisioned again by this gateway.
		err = g.st.put(r.Context(), forgottenKey(rec.AppID, rec.LocalID), uuid)
	}
	if err == nil {
		err = g.st.remove(r.Context(), uuid)
	}
	if err != nil {
		httpx.WriteError(w, g.log, err)
		return
	}
	g.log.Info("hook: device removed from the fleet; forgotten", "device", uuid)
	w.WriteHeader(http.StatusOK)
}

func (g *Gateway) restart(w http.ResponseWriter, r *http.Request) {
	uuid := r.PathValue("uuid")
	_, ok, err := g.st.record(r.Context(), uuid)
	if err == nil && !ok {
		err = reeve.Errorf(reeve.CodeNotFound, "no device %s on this gateway", uuid)
	}
	if err == nil {
		err = g.st.set(r.Context(), uuid, "restart_requested", true)
	}
	if err != nil {
		httpx.WriteError(w, g.log, err)
		return
	}
	g.poke()
	w.WriteHeader(http.StatusAccepted)
}

// firmware serves a release's file to devices that fetch it themselves.
func (g *Gateway) firmware(w http.ResponseWriter, r *http.Request) {
	appID, err := strconv.ParseInt(r.PathValue("app"), 10, 64)
	commit, file := r.PathValue("commit"), path.Clean("/"+r.PathValue("file"))
	if err != nil || commit == "" || strings.ContainsAny(commit, `/\`) || commit == "." || commit == ".." {
		httpx.WriteError(w, g.log, reeve.Errorf(reeve.CodeNotFound, "no such firmware"))
		return
	}
	p := filepath.Join(g.fw.releaseDir(appID, commit), filepath.FromSlash(file))
	if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
		httpx.WriteError(w, g.log, reeve.Errorf(reeve.CodeNotFound, "no firmware %s of release %s", file, commit))
		return
	}
	http.ServeFile(w, r, p)
}
