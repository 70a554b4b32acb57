package serverapi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"reeve.dev/reeve"
)

// This file is the operator API's client: one method per route of
// docs/api.md, "Operator API". Every {fleet} is a fleet's name or numeric
// id; path segments and query values are escaped here, so callers pass
// them as the user typed them.

// operatorPrefix is where the operator API lives.
const operatorPrefix = "/api/v1"

// fleetPath returns /api/v1/fleets/{fleet}, followed by suffix.
func fleetPath(fleet, suffix string) string {
	return operatorPrefix + "/fleets/" + url.PathEscape(fleet) + suffix
}

// devicePath returns /api/v1/devices/{uuid}, followed by suffix.
func devicePath(uuid, suffix string) string {
	return operatorPrefix + "/devices/" + url.PathEscape(uuid) + suffix
}

// WhoAmI checks the client's token: it answers with the token's identity
// and the server's version.
func (c *Client) WhoAmI(ctx context.Context) (WhoAmI, error) {
	var out WhoAmI
	err := c.do(ctx, http.MethodGet, operatorPrefix+"/whoami", nil, &out)
	return out, err
}

// CreateFleet creates a fleet; a taken name is a conflict.
func (c *Client) CreateFleet(ctx context.Context, req CreateFleetRequest) (reeve.Fleet, error) {
	var out reeve.Fleet
	err := c.do(ctx, http.MethodPost, operatorPrefix+"/fleets", req, &out)
	return out, err
}

// Fleets lists every fleet.
func (c *Client) Fleets(ctx context.Context) ([]reeve.Fleet, error) {
	var out []reeve.Fleet
	err := c.do(ctx, http.MethodGet, operatorPrefix+"/fleets", nil, &out)
	return out, err
}

// Fleet returns one fleet by name or id.
func (c *Client) Fleet(ctx context.Context, fleet string) (reeve.Fleet, error) {
	var out reeve.Fleet
	err := c.do(ctx, http.MethodGet, fleetPath(fleet, ""), nil, &out)
	return out, err
}

// UpdateFleet changes a fleet's update strategy or pinned release (an
// empty pin tracks the newest release again).
func (c *Client) UpdateFleet(ctx context.Context, fleet string, req UpdateFleetRequest) (reeve.Fleet, error) {
	var out reeve.Fleet
	err := c.do(ctx, http.MethodPatch, fleetPath(fleet, ""), req, &out)
	return out, err
}

// DeleteFleet removes a fleet with its keys, releases and variables; a
// fleet that still has devices is a conflict.
func (c *Client) DeleteFleet(ctx context.Context, fleet string) error {
	return c.do(ctx, http.MethodDelete, fleetPath(fleet, ""), nil, nil)
}

// CreateKey makes a provisioning key for a fleet. The answer is the only
// time the key itself is shown.
func (c *Client) CreateKey(ctx context.Context, fleet string, req CreateKeyRequest) (CreatedKey, error) {
	var out CreatedKey
	err := c.do(ctx, http.MethodPost, fleetPath(fleet, "/keys"), req, &out)
	return out, err
}

// Keys lists a fleet's provisioning keys, without their secrets.
func (c *Client) Keys(ctx context.Context, fleet string) ([]reeve.ProvisioningKey, error) {
	var out []reeve.ProvisioningKey
	err := c.do(ctx, http.MethodGet, fleetPath(fleet, "/keys"), nil, &out)
	return out, err
}

// RevokeKey revokes a provisioning key.
func (c *Client) RevokeKey(ctx context.Context, id int64) error {
	return c.do(ctx, http.MethodDelete, operatorPrefix+"/keys/"+strconv.FormatInt(id, 10), nil, nil)
}

// Push uploads a compose file as a release of a fleet. created is false
// when that exact file was pushed before (the server answers 200 with the
// existing release instead of 201). A file that does not validate is a
// *reeve.ValidationError listing every problem.
func (c *Client) Push(ctx context.Context, fleet string, compose []byte) (rel reeve.FleetRelease, created bool, err error) {
	status, err := c.doStatus(ctx, http.MethodPost, fleetPath(fleet, "/releases"), PushRequest{Compose: string(compose)}, &rel)
	if err != nil {
		return reeve.FleetRelease{}, false, err
	}
	return rel, status == http.StatusCreated, nil
}

// Releases lists a fleet's releases, newest first, without their compose
// files.
func (c *Client) Releases(ctx context.Context, fleet string) ([]reeve.FleetRelease, error) {
	var out []reeve.FleetRelease
	err := c.do(ctx, http.MethodGet, fleetPath(fleet, "/releases"), nil, &out)
	return out, err
}

// Release returns one release of a fleet with its compose file.
func (c *Client) Release(ctx context.Context, fleet, commit string) (reeve.FleetRelease, error) {
	var out reeve.FleetRelease
	err := c.do(ctx, http.MethodGet, fleetPath(fleet, "/releases/"+url.PathEscape(commit)), nil, &out)
	return out, err
}

// Devices lists the devices of a fleet (name or id), or of every fleet
// when fleet is "".
func (c *Client) Devices(ctx context.Context, fleet string) ([]DeviceView, error) {
	path := operatorPrefix + "/devices"
	if fleet != "" {
		path += "?" + url.Values{"fleet": {fleet}}.Encode()
	}
	var out []DeviceView
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// Device returns one device with its reported state and target commit.
func (c *Client) Device(ctx context.Context, uuid string) (DeviceView, error) {
	var out DeviceView
	err := c.do(ctx, http.MethodGet, devicePath(uuid, ""), nil, &out)
	return out, err
}

// UpdateDevice renames a device or pins it to a release (an empty pin
// follows the fleet again).
func (c *Client) UpdateDevice(ctx context.Context, uuid string, req UpdateDeviceRequest) (DeviceView, error) {
	var out DeviceView
	err := c.do(ctx, http.MethodPatch, devicePath(uuid, ""), req, &out)
	return out, err
}

// DeleteDevice removes a device with its variables.
func (c *Client) DeleteDevice(ctx context.Context, uuid string) error {
	return c.do(ctx, http.MethodDelete, devicePath(uuid, ""), nil, nil)
}

// RevokeDeviceKey revokes a device's own key: the device is refused until
// it is provisioned again.
func (c *Client) RevokeDeviceKey(ctx context.Context, uuid string) error {
	return c.do(ctx, http.MethodDelete, devicePath(uuid, "/key"), nil, nil)
}

// SetTag sets a tag on a device.
func (c *Client) SetTag(ctx context.Context, uuid, key, value string) (DeviceView, error) {
	var out DeviceView
	err := c.do(ctx, http.MethodPut, devicePath(uuid, "/tags/"+url.PathEscape(key)), TagRequest{Value: value}, &out)
	return out, err
}

// DeleteTag removes a tag from a device.
func (c *Client) DeleteTag(ctx context.Context, uuid, key string) error {
	return c.do(ctx, http.MethodDelete, devicePath(uuid, "/tags/"+url.PathEscape(key)), nil, nil)
}

// Vars lists the variables of kind (reeve.VarEnv or reeve.VarConfig) of
// exactly one scope.
func (c *Client) Vars(ctx context.Context, kind string, scope VarScope) ([]reeve.Variable, error) {
	path, err := varPath(kind, scope.query())
	if err != nil {
		return nil, err
	}
	var out []reeve.Variable
	err = c.do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// SetVar sets a variable of kind (reeve.VarEnv or reeve.VarConfig) at the
// request's scope.
func (c *Client) SetVar(ctx context.Context, kind string, req SetVarRequest) (reeve.Variable, error) {
	path, err := varPath(kind, nil)
	if err != nil {
		return reeve.Variable{}, err
	}
	var out reeve.Variable
	err = c.do(ctx, http.MethodPut, path, req, &out)
	return out, err
}

// DeleteVar removes the variable name of kind (reeve.VarEnv or
// reeve.VarConfig) from a scope.
func (c *Client) DeleteVar(ctx context.Context, kind string, scope VarScope, name string) error {
	q := scope.query()
	q.Set("name", name)
	path, err := varPath(kind, q)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// query returns the scope as the query of /api/v1/env or /api/v1/config,
// leaving out the parts that are not set.
func (s VarScope) query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"fleet": s.Fleet, "device": s.Device, "service": s.Service} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// varPath returns /api/v1/env or /api/v1/config with the query q.
func varPath(kind string, q url.Values) (string, error) {
	if kind != reeve.VarEnv && kind != reeve.VarConfig {
		return "", fmt.Errorf("unknown variable kind %q: use %q or %q", kind, reeve.VarEnv, reeve.VarConfig)
	}
	path := operatorPrefix + "/" + kind
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return path, nil
}
