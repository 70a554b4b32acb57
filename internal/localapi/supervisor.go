package localapi

// The balena-compatible supervisor routes: same paths, bodies and answers
// as balena's supervisor API, so that apps written for it run unchanged.
// Where reeve differs (errors are reeve's JSON error body, a key for
// another app gets 403 rather than 401, …) docs/api.md says so.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/httpx"
)

// lookupApp maps an appId to the app of the target, after checking that
// the caller may act on it: 403 for another app's key, 404 when the device
// has no app with that ID.
func (s *Server) lookupApp(c caller, appID int64) (string, reeve.App, error) {
	apps := s.ownApps()
	uuid, found := "", false
	for _, u := range sortedKeys(apps) {
		if apps[u].ID == appID {
			uuid, found = u, true
			break
		}
	}
	if c.scoped() && (!found || uuid != c.App) {
		own := "an app that is no longer on this device"
		if a, ok := apps[c.App]; ok {
			own = fmt.Sprintf("app %q (appId %d)", a.Name, a.ID)
		}
		return "", reeve.App{}, reeve.Errorf(reeve.CodeForbidden,
			"this API key belongs to %s and may act only on it, not on appId %d: use the device-wide key", own, appID)
	}
	if !found {
		return "", reeve.App{}, reeve.Errorf(reeve.CodeNotFound,
			"no app with appId %d on this device: GET /v2/applications/state lists them", appID)
	}
	return uuid, apps[uuid], nil
}

// locked reports whether an action that stops the app's services must be
// refused: a service holds the app's update lock, and neither the caller
// nor the device config (REEVE_SUPERVISOR_OVERRIDE_LOCK, AppLocked's
// business) overrides it. The agent checks again when it acts.
func (s *Server) locked(appUUID string, force bool) bool {
	return !force && s.agent.AppLocked(appUUID)
}

// lockedError refuses an action on a locked app; outcome says what did not
// happen ("it was not restarted").
func lockedError(app reeve.App, outcome string) error {
	return reeve.Errorf(reeve.CodeLocked,
		"app %q (appId %d) is locked: one of its services holds the update lock, so %s; retry once the lock is released, or send {\"force\": true} to override the lock",
		app.Name, app.ID, outcome)
}

// act runs an action on the app with appID once the caller may, the app
// exists and (when lockable) no update lock is in the way. It returns the
// app's UUID, or "" after writing the refusal.
func (s *Server) act(w http.ResponseWriter, r *http.Request, c caller, appID int64, lockable, force bool, done string,
	do func(ctx context.Context, appUUID string) error) (string, reeve.App) {
	uuid, app, err := s.lookupApp(c, appID)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return "", app
	}
	if lockable && s.locked(uuid, force) {
		httpx.WriteError(w, s.log, lockedError(app, "it was not "+done))
		return "", app
	}
	if err := do(r.Context(), uuid); err != nil {
		httpx.WriteError(w, s.log, err)
		return "", app
	}
	return uuid, app
}

// pathAppID reads the {appId} of the path.
func pathAppID(r *http.Request) (int64, error) {
	return positiveInt("appId", r.PathValue("appId"))
}

func writeOK(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("OK"))
}

// ---- v1 ----

// appBody is the body of POST /v1/restart and /v1/purge.
type appBody struct {
	AppID json.RawMessage `json:"appId"`
	Force json.RawMessage `json:"force"`
}

func readAppBody(w http.ResponseWriter, r *http.Request) (int64, bool, error) {
	var b appBody
	if err := decodeBody(w, r, &b); err != nil {
		return 0, false, err
	}
	id, ok, err := jsonID("appId", b.AppID)
	if err != nil {
		return 0, false, err
	}
	if !ok {
		return 0, false, reeve.Errorf(reeve.CodeInvalid, "appId is required: the numeric ID of the app (GET /v2/applications/state lists them)")
	}
	force, err := jsonFlag("force", b.Force)
	return id, force, err
}

// update asks the fleet link to poll now: 204, as balena answers when it
// starts an update check.
func (s *Server) update(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.opts.Update == nil {
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeUnavailable,
			"POST /v1/update is not available on this agent: it has no fleet server to poll (local mode sets the target with POST /v2/local/target-state)"))
		return
	}
	force, err := readForce(w, r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	s.opts.Update(force)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) v1Restart(w http.ResponseWriter, r *http.Request, c caller) {
	id, force, err := readAppBody(w, r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	if uuid, _ := s.act(w, r, c, id, true, force, "restarted", func(ctx context.Context, app string) error {
		return s.agent.RestartApp(ctx, app, force)
	}); uuid != "" {
		writeOK(w)
	}
}

// V1Result is balena's {"Data","Error"} answer of POST /v1/purge (Error
// "") and of POST /v1/reboot and /v1/shutdown (Error null).
type V1Result struct {
	Data  string  `json:"Data"`
	Error *string `json:"Error"`
}

func (s *Server) v1Purge(w http.ResponseWriter, r *http.Request, c caller) {
	id, force, err := readAppBody(w, r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	if uuid, _ := s.act(w, r, c, id, true, force, "purged", func(ctx context.Context, app string) error {
		return s.agent.PurgeApp(ctx, app, force)
	}); uuid != "" {
		empty := ""
		httpx.WriteJSON(w, http.StatusOK, V1Result{Data: "OK", Error: &empty})
	}
}

// firstService returns the app's first service in name order: what
// balena's single-container routes act on and answer with.
func firstService(app reeve.App) (commit string, rel reeve.Release, name string, ok bool) {
	commit, rel, ok = app.Release()
	if !ok || len(rel.Services) == 0 {
		return "", rel, "", false
	}
	return commit, rel, sortedKeys(rel.Services)[0], true
}

// serviceStatus returns the status of one service of the app.
func (s *Server) serviceStatus(appUUID, service string) (agent.ServiceStatus, bool) {
	for _, st := range s.agent.Status().Services {
		if st.AppUUID == appUUID && st.Service == service {
			return st, true
		}
	}
	return agent.ServiceStatus{}, false
}

// V1Container is the answer of POST /v1/apps/{appId}/stop and /start.
type V1Container struct {
	ContainerID *string `json:"containerId"` // null when the service has no container
}

func (s *Server) containerOf(app reeve.App, appUUID string) V1Container {
	_, _, name, ok := firstService(app)
	if !ok {
		return V1Container{}
	}
	if st, ok := s.serviceStatus(appUUID, name); ok && st.ContainerID != "" {
		return V1Container{ContainerID: &st.ContainerID}
	}
	return V1Container{}
}

// v1Stop stops every service of the app (balena refuses multi-container
// apps here; reeve stops them all) and answers with the container of the
// first service.
func (s *Server) v1Stop(w http.ResponseWriter, r *http.Request, c caller) {
	s.v1StopStart(w, r, c, "stopped", s.agent.StopApp)
}

// v1Start starts every service of the app again.
func (s *Server) v1Start(w http.ResponseWriter, r *http.Request, c caller) {
	s.v1StopStart(w, r, c, "started", func(ctx context.Context, app string, _ bool) error {
		return s.agent.StartApp(ctx, app)
	})
}

// v1StopStart is POST /v1/apps/{appId}/stop and /start. Both change what
// runs, so a held update lock stops either unless forced.
func (s *Server) v1StopStart(w http.ResponseWriter, r *http.Request, c caller, done string,
	do func(ctx context.Context, appUUID string, force bool) error) {
	id, err := pathAppID(r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	force, err := readForce(w, r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	if uuid, app := s.act(w, r, c, id, true, force, done, func(ctx context.Context, app string) error {
		return do(ctx, app, force)
	}); uuid != "" {
		httpx.WriteJSON(w, http.StatusOK, s.containerOf(app, uuid))
	}
}

// V1App is the answer of GET /v1/apps/{appId}: balena's single-container
// shape, filled from the app's first service in name order.
type V1App struct {
	AppID       int64             `json:"appId"`
	Commit      string            `json:"commit"` // the release the service runs, else the target's
	ContainerID *string           `json:"containerId"`
	Env         map[string]string `json:"env"`
	ImageID     string            `json:"imageId"` // the image reference, as balena gives it
	ReleaseID   int64             `json:"releaseId"`
	ServiceName string            `json:"serviceName"`
}

// privateEnv reports the variables GET /v1/apps/{appId} never shows, as
// balena: the keys.
func privateEnv(name string) bool {
	switch name {
	case "REEVE_SUPERVISOR_API_KEY", "REEVE_API_KEY", "BALENA_SUPERVISOR_API_KEY", "BALENA_API_KEY",
		"RESIN_SUPERVISOR_API_KEY", "RESIN_API_KEY":
		return true
	}
	return false
}

func (s *Server) v1App(w http.ResponseWriter, r *http.Request, c caller) {
	id, err := pathAppID(r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	uuid, app, err := s.lookupApp(c, id)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	commit, rel, name, ok := firstService(app)
	if !ok {
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeNotFound, "app %q (appId %d) has no release with a service on this device", app.Name, app.ID))
		return
	}
	svc := rel.Services[name]
	out := V1App{AppID: app.ID, Commit: commit, Env: map[string]string{}, ImageID: svc.Image, ReleaseID: rel.ID, ServiceName: name}
	for k, v := range svc.Environment {
		if !privateEnv(k) {
			out.Env[k] = v
		}
	}
	if st, ok := s.serviceStatus(uuid, name); ok {
		if st.ContainerID != "" {
			out.ContainerID = &st.ContainerID
		}
		if st.CurrentCommit != "" {
			out.Commit = st.CurrentCommit
		}
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

// V1Device is the answer of GET /v1/device. Fields the agent does not know
// are null: ip_address, mac_address and os_version always; api_port when
// the request did not come through a TCP listener; commit, status and
// download_progress when no service is there to tell.
type V1Device struct {
	APIPort           *int    `json:"api_port"`
	IPAddress         *string `json:"ip_address"`
	MACAddress        *string `json:"mac_address"`
	Commit            *string `json:"commit"`
	Status            *string `json:"status"`
	DownloadProgress  *int    `json:"download_progress"`
	OSVersion         *string `json:"os_version"`
	SupervisorVersion string  `json:"supervisor_version"`
	UpdatePending     bool    `json:"update_pending"`
	UpdateDownloaded  bool    `json:"update_downloaded"`
	UpdateFailed      bool    `json:"update_failed"`
}

// v1Device answers with the device's state as balena's single-container
// endpoint does: status, commit and download progress are the first
// service's (the first app by UUID, then the first service by name; an
// app's key sees its own app's).
func (s *Server) v1Device(w http.ResponseWriter, r *http.Request, c caller) {
	st := s.agent.Status()
	apps := s.ownApps()
	out := V1Device{SupervisorVersion: reeve.Version}
	if addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if tcp, ok := addr.(*net.TCPAddr); ok {
			port := tcp.Port
			out.APIPort = &port
		}
	}
	downloading := false
	for _, svc := range st.Services {
		if _, ok := apps[svc.AppUUID]; !ok {
			continue
		}
		if svc.Status == agent.SvcDownloading || svc.DownloadProgress != nil {
			downloading = true
		}
		if out.Status != nil || !c.sees(svc.AppUUID) {
			continue
		}
		status := balenaStatus(svc.Status)
		if svc.Status == agent.SvcRunning {
			status = "Idle"
		}
		out.Status, out.DownloadProgress = &status, svc.DownloadProgress
		if svc.CurrentCommit != "" {
			commit := svc.CurrentCommit
			out.Commit = &commit
		}
	}
	out.UpdatePending = st.AppState != "" && st.AppState != agent.AppStateApplied
	out.UpdateDownloaded = out.UpdatePending && !downloading
	out.UpdateFailed = st.AppState == agent.AppStateError || st.AppState == agent.AppStateLocked
	httpx.WriteJSON(w, http.StatusOK, out)
}

// regenerateKey replaces the device-wide key and answers with the new one
// as text, as balena does.
func (s *Server) regenerateKey(w http.ResponseWriter, r *http.Request, _ caller) {
	if err := noBody(w, r); err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	key, err := s.agent.RegenerateAPIKey(r.Context())
	if err != nil {
		httpx.WriteError(w, s.log, fmt.Errorf("regenerate the API key: %w", err))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte(key))
}

// hostAction serves POST /v1/reboot and /v1/shutdown: refused with 423
// while any app is locked, unless forced; 202 {"Data":"OK","Error":null}
// once the host command has run.
func (s *Server) hostAction(name string, run func(ctx context.Context) error) handler {
	return func(w http.ResponseWriter, r *http.Request, _ caller) {
		if run == nil {
			httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeUnavailable,
				"POST /v1/%s is not available on this agent: it has no host command to %s with", name, name))
			return
		}
		force, err := readForce(w, r)
		if err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		apps := s.ownApps()
		for _, uuid := range sortedKeys(apps) {
			if s.locked(uuid, force) {
				app := apps[uuid]
				httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeLocked,
					"app %q (appId %d) is locked: one of its services holds the update lock, so the device will not %s; retry once the lock is released, or send {\"force\": true} to %s anyway",
					app.Name, app.ID, name, name))
				return
			}
		}
		s.log.Info("host "+name+" requested through the local API", "force", force)
		// The command runs to its end even if the client goes away.
		if err := run(context.WithoutCancel(r.Context())); err != nil {
			httpx.WriteError(w, s.log, fmt.Errorf("%s the host: %w", name, err))
			return
		}
		httpx.WriteJSON(w, http.StatusAccepted, V1Result{Data: "OK"})
	}
}

// ---- v2 ----

// AppState is one app in the answer of GET /v2/applications/state, which
// is keyed by app name (an app whose name another app already took is
// keyed by its UUID).
type AppState struct {
	AppID    int64                      `json:"appId"`
	AppUUID  string                     `json:"appUuid"`
	Commit   string                     `json:"commit"` // the target release; "" when the app has none
	Services map[string]AppServiceState `json:"services"`
}

// AppServiceState is one service in GET /v2/applications/state.
type AppServiceState struct {
	Status           string `json:"status"`
	ReleaseID        int64  `json:"releaseId"`
	DownloadProgress *int   `json:"downloadProgress"`
	Image            string `json:"image"`
}

// balenaStatus writes a service status the way balena's supervisor does:
// capitalised ("Running", "Downloading", "Handing over"), except "exited",
// which it passes through from the engine.
func balenaStatus(s string) string {
	switch s {
	case "":
		return "Waiting"
	case agent.SvcExited:
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (s *Server) statusIndex() map[[2]string]agent.ServiceStatus {
	idx := map[[2]string]agent.ServiceStatus{}
	for _, st := range s.agent.Status().Services {
		idx[[2]string{st.AppUUID, st.Service}] = st
	}
	return idx
}

// appsState answers with every app the caller may see.
func (s *Server) appsState(w http.ResponseWriter, _ *http.Request, c caller) {
	apps := s.ownApps()
	idx := s.statusIndex()
	out := map[string]AppState{}
	for _, uuid := range sortedKeys(apps) {
		if !c.sees(uuid) {
			continue
		}
		app := apps[uuid]
		as := AppState{AppID: app.ID, AppUUID: uuid, Services: map[string]AppServiceState{}}
		if commit, rel, ok := app.Release(); ok {
			as.Commit = commit
			for name, svc := range rel.Services {
				st := idx[[2]string{uuid, name}]
				ref := st.Image
				if ref == "" {
					ref = svc.Image
				}
				as.Services[name] = AppServiceState{Status: balenaStatus(st.Status), ReleaseID: rel.ID,
					DownloadProgress: st.DownloadProgress, Image: ref}
			}
		}
		key := app.Name
		if _, taken := out[key]; taken || key == "" {
			key = uuid
		}
		out[key] = as
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

// AppStateResponse is the answer of GET /v2/applications/{appId}/state:
// balena's legacy shape, services keyed by imageId.
type AppStateResponse struct {
	Local     map[string]LegacyApp `json:"local"`     // keyed by appId
	Dependent map[string]any       `json:"dependent"` // always {}
	Commit    *string              `json:"commit"`    // the release running, else the target's; null when none
}

// LegacyApp is one app of AppStateResponse.
type LegacyApp struct {
	Services map[string]LegacyService `json:"services"` // keyed by imageId
}

// LegacyService is one service of LegacyApp.
type LegacyService struct {
	Status           string `json:"status"`
	ReleaseID        int64  `json:"releaseId"`
	DownloadProgress *int   `json:"download_progress"`
}

func (s *Server) appState(w http.ResponseWriter, r *http.Request, c caller) {
	id, err := pathAppID(r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	uuid, app, err := s.lookupApp(c, id)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	idx := s.statusIndex()
	la := LegacyApp{Services: map[string]LegacyService{}}
	out := AppStateResponse{Local: map[string]LegacyApp{strconv.FormatInt(app.ID, 10): la}, Dependent: map[string]any{}}
	if commit, rel, ok := app.Release(); ok {
		out.Commit = &commit
		for _, name := range sortedKeys(rel.Services) {
			st := idx[[2]string{uuid, name}]
			la.Services[strconv.FormatInt(rel.Services[name].ImageID, 10)] = LegacyService{
				Status: balenaStatus(st.Status), ReleaseID: rel.ID, DownloadProgress: st.DownloadProgress}
			if st.CurrentCommit != "" {
				running := st.CurrentCommit
				out.Commit = &running
			}
		}
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

func (s *Server) v2Restart(w http.ResponseWriter, r *http.Request, c caller) {
	s.v2AppAction(w, r, c, "restarted", s.agent.RestartApp)
}

func (s *Server) v2Purge(w http.ResponseWriter, r *http.Request, c caller) {
	s.v2AppAction(w, r, c, "purged", s.agent.PurgeApp)
}

func (s *Server) v2AppAction(w http.ResponseWriter, r *http.Request, c caller, done string,
	do func(ctx context.Context, appUUID string, force bool) error) {
	id, err := pathAppID(r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	force, err := readForce(w, r)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	if uuid, _ := s.act(w, r, c, id, true, force, done, func(ctx context.Context, app string) error {
		return do(ctx, app, force)
	}); uuid != "" {
		writeOK(w)
	}
}

// serviceBody is the body of the v2 service routes.
type serviceBody struct {
	ServiceName json.RawMessage `json:"serviceName"`
	ImageID     json.RawMessage `json:"imageId"`
	Force       json.RawMessage `json:"force"`
}

type serviceAct int

const (
	actRestart serviceAct = iota
	actStop
	actStart
)

// serviceAction serves POST /v2/applications/{appId}/restart-service,
// /stop-service and /start-service. The service is named by serviceName or
// by imageId (Service.ImageID of the app's target release). Starting takes
// no lock: force is read and has no effect.
func (s *Server) serviceAction(act serviceAct) handler {
	return func(w http.ResponseWriter, r *http.Request, c caller) {
		id, err := pathAppID(r)
		if err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		var b serviceBody
		if err := decodeBody(w, r, &b); err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		name, err := jsonString("serviceName", b.ServiceName)
		if err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		imageID, byImage, err := jsonID("imageId", b.ImageID)
		if err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		force, err := jsonFlag("force", b.Force)
		if err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		if name == "" && !byImage {
			httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeInvalid, "serviceName or imageId is required"))
			return
		}
		uuid, app, err := s.lookupApp(c, id)
		if err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		if name, err = resolveService(app, name, imageID, byImage); err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		verb := map[serviceAct]string{actStart: "started", actStop: "stopped"}[act]
		if verb == "" {
			verb = "restarted"
		}
		// Every one of them changes what runs: a held update lock stops it.
		if s.locked(uuid, force) {
			httpx.WriteError(w, s.log, lockedError(app, fmt.Sprintf("service %s was not %s", name, verb)))
			return
		}
		switch act {
		case actStart:
			err = s.agent.StartService(r.Context(), uuid, name)
		case actStop:
			err = s.agent.StopService(r.Context(), uuid, name, force)
		default:
			err = s.agent.RestartService(r.Context(), uuid, name, force)
		}
		if err != nil {
			httpx.WriteError(w, s.log, err)
			return
		}
		writeOK(w)
	}
}

// resolveService finds the service of the app's target release named by
// name or imageID; both given must name the same one.
func resolveService(app reeve.App, name string, imageID int64, byImage bool) (string, error) {
	_, rel, _ := app.Release()
	if byImage {
		found := ""
		for _, n := range sortedKeys(rel.Services) {
			if rel.Services[n].ImageID == imageID {
				found = n
				break
			}
		}
		if found == "" {
			return "", reeve.Errorf(reeve.CodeNotFound, "app %q (appId %d) has no service with imageId %d", app.Name, app.ID, imageID)
		}
		if name != "" && name != found {
			return "", reeve.Errorf(reeve.CodeInvalid, "serviceName %q and imageId %d name different services (imageId %d is %q): send one of them", name, imageID, imageID, found)
		}
		return found, nil
	}
	if _, ok := rel.Services[name]; !ok {
		return "", reeve.Errorf(reeve.CodeNotFound, "app %q (appId %d) has no service %q", app.Name, app.ID, name)
	}
	return name, nil
}

// DeviceNameResponse is the answer of GET /v2/device/name.
type DeviceNameResponse struct {
	Status     string `json:"status"`
	DeviceName string `json:"deviceName"`
}

func (s *Server) deviceName(w http.ResponseWriter, _ *http.Request, _ caller) {
	httpx.WriteJSON(w, http.StatusOK, DeviceNameResponse{Status: "success", DeviceName: s.agent.DeviceName()})
}

// Tag is one device tag as GET /v2/device/tags lists it.
type Tag struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// TagsResponse is the answer of GET and PATCH /v2/device/tags: balena's
// {"status":"success","tags":[{name, value}]}, sorted by name.
type TagsResponse struct {
	Status string `json:"status"`
	Tags   []Tag  `json:"tags"`
}

// PatchTagsBody is the body of PATCH /v2/device/tags: the tags to set;
// a null value removes the tag.
type PatchTagsBody struct {
	Tags map[string]*string `json:"tags"`
}

func tagsResponse(tags reeve.Tags) TagsResponse {
	out := TagsResponse{Status: "success", Tags: []Tag{}}
	for _, k := range sortedKeys(tags) {
		out.Tags = append(out.Tags, Tag{Name: k, Value: tags[k]})
	}
	return out
}

var errNoTags = reeve.Errorf(reeve.CodeUnavailable, "device tags live on the fleet server: this agent has none (local mode)")

func (s *Server) deviceTags(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.opts.Tags == nil {
		httpx.WriteError(w, s.log, errNoTags)
		return
	}
	tags, err := s.opts.Tags(r.Context())
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, tagsResponse(tags))
}

func (s *Server) patchDeviceTags(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.opts.PatchTags == nil {
		httpx.WriteError(w, s.log, errNoTags)
		return
	}
	var b PatchTagsBody
	if err := decodeBody(w, r, &b); err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	if len(b.Tags) == 0 {
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeInvalid, "tags: nothing to change: send {\"tags\": {\"name\": \"value\"}} (null removes a tag)"))
		return
	}
	tags, err := s.opts.PatchTags(r.Context(), b.Tags)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, tagsResponse(tags))
}

// CleanupVolumesResponse is the answer of GET /v2/cleanup-volumes:
// balena's {"status":"success"} and the names of the volumes removed.
type CleanupVolumesResponse struct {
	Status  string   `json:"status"`
	Volumes []string `json:"volumes"`
}

func (s *Server) cleanupVolumes(w http.ResponseWriter, r *http.Request, _ caller) {
	names, err := s.agent.CleanupVolumes(r.Context())
	if err != nil {
		httpx.WriteError(w, s.log, fmt.Errorf("clean up volumes: %w", err))
		return
	}
	if names == nil {
		names = []string{}
	}
	httpx.WriteJSON(w, http.StatusOK, CleanupVolumesResponse{Status: "success", Volumes: names})
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ownApps returns the apps of the device's target that run on it: its
// dependent apps (firmware for the devices it carries, see dependent.go)
// are not the supervisor routes' business.
func (s *Server) ownApps() map[string]reeve.App {
	ts, _ := s.agent.Target()
	out := map[string]reeve.App{}
	for uuid, app := range ts[s.agent.UUID()].Apps {
		if app.Class != reeve.ClassDependent {
			out[uuid] = app
		}
	}
	return out
}
