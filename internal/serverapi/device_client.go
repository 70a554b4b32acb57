package serverapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// maxTargetBody bounds a target state read from the server. A target is a
// few KiB; a server that sends more than this is broken or hostile.
const maxTargetBody = 16 << 20

// StateResult is the answer of GET /device/v3/{uuid}/state.
type StateResult struct {
	// Target is the device's target state; nil when NotModified.
	Target reeve.TargetState
	// ETag identifies Target; send it back to get 304 while it holds.
	ETag string
	// NotModified is true when the server answered 304: the target is still
	// the one the ETag sent names.
	NotModified bool
	// LongPollMax is the longest wait the server honours, in seconds, from
	// its X-Reeve-Long-Poll header; 0 when it does not offer long polling.
	LongPollMax int
}

// Register registers a device: POST /device/register. The client must carry
// the fleet's provisioning key. A UUID that is already registered gets an
// error with code conflict (see docs/api.md for the key-exchange path).
func (c *Client) Register(ctx context.Context, req RegisterRequest) (reeve.Device, error) {
	var d reeve.Device
	if err := c.do(ctx, http.MethodPost, "/device/register", req, &d); err != nil {
		return reeve.Device{}, fmt.Errorf("register device %s: %w", req.UUID, err)
	}
	return d, nil
}

// KeyExchange replaces a registered device's key with apiKey:
// POST /device/v3/{uuid}/key-exchange. The client must carry the
// provisioning key of the device's fleet.
func (c *Client) KeyExchange(ctx context.Context, uuid, apiKey string) error {
	path := "/device/v3/" + url.PathEscape(uuid) + "/key-exchange"
	if err := c.do(ctx, http.MethodPost, path, KeyExchangeRequest{APIKey: apiKey}, nil); err != nil {
		return fmt.Errorf("exchange the key of device %s: %w", uuid, err)
	}
	return nil
}

// RegisterDependent registers a dependent device that the gateway
// gatewayUUID carries: POST /device/v3/{uuid}/dependent-devices with the
// gateway's device key. It answers the device as stored, with its UUID
// (made by the server when req gives none). A UUID that is already
// registered gets an error with code conflict; an app that is not a
// dependent app of the gateway's fleet, forbidden; an unknown app,
// not_found.
func (c *Client) RegisterDependent(ctx context.Context, gatewayUUID string, req RegisterDependentRequest) (reeve.Device, error) {
	var d reeve.Device
	path := "/device/v3/" + url.PathEscape(gatewayUUID) + "/dependent-devices"
	if err := c.do(ctx, http.MethodPost, path, req, &d); err != nil {
		return reeve.Device{}, fmt.Errorf("register a dependent device of app %d: %w", req.AppID, err)
	}
	return d, nil
}

// State reads the device's target state: GET /device/v3/{uuid}/state with
// the device's key. A non-empty etag is sent as If-None-Match; an unchanged
// target then answers NotModified. A positive wait asks for a long poll of
// that long (rounded up to whole seconds, 1 to MaxWait): the server holds
// the request until the target changes or the time is up.
//
// A long poll outlives the 30 s timeout of the default http.Client: use a
// client built with an http.Client without Timeout, and bound the request
// with ctx; the request ends when ctx ends.
//
// A target that does not parse (reeve.ParseTargetState) comes back as an
// error wrapping *reeve.ValidationError, together with the ETag and
// LongPollMax of the answer, so that the caller can remember what it
// refused.
func (c *Client) State(ctx context.Context, uuid, etag string, wait time.Duration) (StateResult, error) {
	path := "/device/v3/" + url.PathEscape(uuid) + "/state"
	if wait > 0 {
		secs := int((wait + time.Second - 1) / time.Second)
		secs = min(max(secs, 1), MaxWait)
		path += "?wait=" + strconv.Itoa(secs)
	}
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return StateResult{}, err
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return StateResult{}, fmt.Errorf("cannot reach the fleet server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	res := StateResult{ETag: resp.Header.Get("ETag"), LongPollMax: longPollMax(resp.Header)}
	switch {
	case resp.StatusCode == http.StatusNotModified:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		res.NotModified = true
		if res.ETag == "" {
			res.ETag = etag
		}
		return res, nil
	case resp.StatusCode >= 300:
		return StateResult{}, fmt.Errorf("read target state: %w", httpx.DecodeError(resp))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTargetBody+1))
	if err != nil {
		return StateResult{}, fmt.Errorf("read target state from %s: %w", c.base, err)
	}
	if len(body) > maxTargetBody {
		return StateResult{}, fmt.Errorf("read target state: the server sent more than %d bytes", maxTargetBody)
	}
	ts, err := reeve.ParseTargetState(body)
	if err != nil {
		return res, fmt.Errorf("the target state from the fleet server is not valid: %w", err)
	}
	res.Target = ts
	return res, nil
}

// Report sends the device's current state, holding only what changed since
// the last accepted report: PATCH /device/v3/state with the device's key.
func (c *Client) Report(ctx context.Context, cs reeve.CurrentState) error {
	if err := c.do(ctx, http.MethodPatch, "/device/v3/state", cs, nil); err != nil {
		return fmt.Errorf("report current state: %w", err)
	}
	return nil
}

// longPollMax reads the X-Reeve-Long-Poll header: 0 when absent or not a
// positive number.
func longPollMax(h http.Header) int {
	v := strings.TrimSpace(h.Get(LongPollHeader))
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// Tags returns the device's tags (GET /device/v3/{uuid}/tags).
func (c *Client) Tags(ctx context.Context, uuid string) (reeve.Tags, error) {
	var out DeviceTags
	err := c.do(ctx, http.MethodGet, "/device/v3/"+url.PathEscape(uuid)+"/tags", nil, &out)
	return out.Tags, err
}

// PatchTags changes the device's tags (a nil value removes one) and
// returns them all.
func (c *Client) PatchTags(ctx context.Context, uuid string, patch map[string]*string) (reeve.Tags, error) {
	var out DeviceTags
	err := c.do(ctx, http.MethodPatch, "/device/v3/"+url.PathEscape(uuid)+"/tags", PatchTagsRequest{Tags: patch}, &out)
	return out.Tags, err
}
