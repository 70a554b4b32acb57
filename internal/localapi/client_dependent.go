package localapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"reeve.dev/reeve/internal/dependent"
	"reeve.dev/reeve/internal/httpx"
)

// The dependent-device routes, as a gateway application calls them.

// Ready checks that the agent answers, the way a gateway application
// does: GET / without a key answers 401 from a live agent.
func (c *Client) Ready(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/", nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("GET %s/ answered %d, not 401: is that the reeve agent?", c.base, resp.StatusCode)
	}
	return nil
}

// DependentApps lists the dependent apps the agent carries.
func (c *Client) DependentApps(ctx context.Context) ([]dependent.App, error) {
	var out []dependent.App
	return out, c.do(ctx, http.MethodGet, "/v1/dependent-apps", nil, &out)
}

// DependentDevices lists the dependent devices the agent carries.
func (c *Client) DependentDevices(ctx context.Context) ([]dependent.Device, error) {
	var out []dependent.Device
	return out, c.do(ctx, http.MethodGet, "/v1/devices", nil, &out)
}

// DependentDevice returns one (not_found, gone while it is deleted).
func (c *Client) DependentDevice(ctx context.Context, uuid string) (dependent.Device, error) {
	var out dependent.Device
	return out, c.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(uuid), nil, &out)
}

// ProvisionDependent provisions a device of a dependent app.
func (c *Client) ProvisionDependent(ctx context.Context, appID int64, deviceType, localID string) (dependent.Device, error) {
	var out dependent.Device
	body := map[string]any{"appId": appID, "device_type": deviceType, "local_id": localID}
	return out, c.do(ctx, http.MethodPost, "/v1/devices", body, &out)
}

// UpdateDependent reports what a device runs: the fields of PUT
// /v1/devices/{uuid} (status, is_online, commit, releaseId, environment,
// config).
func (c *Client) UpdateDependent(ctx context.Context, uuid string, fields map[string]any) error {
	return c.do(ctx, http.MethodPut, "/v1/devices/"+url.PathEscape(uuid), fields, nil)
}

// DependentLogLine is a line of POST /v1/devices/{uuid}/logs.
type DependentLogLine struct {
	Message   string `json:"message"`
	Timestamp int64  `json:"timestamp"` // unix milliseconds
	IsSystem  bool   `json:"isSystem"`
}

// DependentLogs passes on a device's log lines.
func (c *Client) DependentLogs(ctx context.Context, uuid string, lines []DependentLogLine) error {
	return c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(uuid)+"/logs", lines, nil)
}

// DependentAssets downloads the firmware tar of an app's release into w.
// It has no time limit of its own (a large tar over a slow link): ctx
// bounds it.
func (c *Client) DependentAssets(ctx context.Context, appID int64, commit string, w io.Writer) error {
	req, err := c.newRequest(ctx, http.MethodGet, fmt.Sprintf("/v1/dependent-apps/%d/assets/%s", appID, url.PathEscape(commit)), nil)
	if err != nil {
		return err
	}
	hc := *c.http
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("download the firmware of app %d release %s: %w", appID, commit, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return httpx.DecodeError(resp)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}
