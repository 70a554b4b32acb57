package docker

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"sort"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
)

// CreateNetwork creates the release network <appUUID>_<name>. A network of
// that name with the same definition is kept (nil); one with another
// definition is an error (remove it first).
func (r *Runtime) CreateNetwork(ctx context.Context, spec reeve.NetworkSpec) error {
	name := engineName(r.prefix+spec.AppUUID, spec.Name)
	hash := spec.Network.ConfigHash()
	defer r.locks.lock("network/" + name)()

	found, err := r.findNetworks(ctx, name)
	if err != nil {
		return err
	}
	for _, n := range found {
		if n.Labels[LabelManaged] != r.managed || n.Labels[LabelConfigHash] != hash {
			return fmt.Errorf("create network %s: a network of that name (%s) exists with another definition", name, shortID(n.ID))
		}
	}
	if len(found) > 0 {
		return nil
	}

	n := spec.Network
	labels := map[string]string{}
	maps.Copy(labels, n.Labels)
	maps.Copy(labels, map[string]string{
		LabelManaged:     r.managed,
		LabelAppUUID:     spec.AppUUID,
		LabelNetworkName: spec.Name,
		LabelConfigHash:  hash,
	})
	opts := client.NetworkCreateOptions{
		Driver:   n.Driver,
		Options:  n.DriverOpts,
		Internal: n.Internal,
		Labels:   labels,
	}
	if n.EnableIPv6 {
		opts.EnableIPv6 = &n.EnableIPv6
	}
	if n.IPAM != nil {
		ipam := &network.IPAM{Driver: n.IPAM.Driver}
		for _, c := range n.IPAM.Config {
			var ic network.IPAMConfig
			if c.Subnet != "" {
				if ic.Subnet, err = netip.ParsePrefix(c.Subnet); err != nil {
					return fmt.Errorf("create network %s: invalid subnet %q", name, c.Subnet)
				}
			}
			if c.IPRange != "" {
				if ic.IPRange, err = netip.ParsePrefix(c.IPRange); err != nil {
					return fmt.Errorf("create network %s: invalid ip_range %q", name, c.IPRange)
				}
			}
			if c.Gateway != "" {
				if ic.Gateway, err = netip.ParseAddr(c.Gateway); err != nil {
					return fmt.Errorf("create network %s: invalid gateway %q", name, c.Gateway)
				}
			}
			ipam.Config = append(ipam.Config, ic)
		}
		opts.IPAM = ipam
	}
	res, err := r.c.NetworkCreate(ctx, name, opts)
	if err != nil {
		return r.wrap(err, "create network %s", name)
	}
	if len(res.Warning) > 0 {
		// API 1.41 engines create a second network of the same name
		// (with a warning) instead of refusing: another process created
		// it meanwhile: the oldest stays, ours goes if it is not it.
		found, err := r.findNetworks(ctx, name)
		if err == nil && len(found) > 1 {
			sort.Slice(found, func(i, j int) bool {
				if !found[i].Created.Equal(found[j].Created) {
					return found[i].Created.Before(found[j].Created)
				}
				return found[i].ID < found[j].ID
			})
			if found[0].ID != res.ID {
				_, _ = r.c.NetworkRemove(ctx, res.ID, client.NetworkRemoveOptions{})
			}
		}
	}
	return nil
}

// RemoveNetwork removes the release network; removing a missing network is
// a no-op, one that containers use is an error.
func (r *Runtime) RemoveNetwork(ctx context.Context, appUUID, name string) error {
	full := engineName(r.prefix+appUUID, name)
	defer r.locks.lock("network/" + full)()
	found, err := r.findNetworks(ctx, full)
	if err != nil {
		return err
	}
	for _, n := range found {
		_, err := r.c.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{})
		if err != nil && !isNotFound(err) {
			return r.wrap(err, "remove network %s", full)
		}
	}
	return nil
}

// findNetworks returns the networks named exactly name (an API 1.41 engine
// may hold more than one).
func (r *Runtime) findNetworks(ctx context.Context, name string) ([]network.Summary, error) {
	list, err := r.c.NetworkList(ctx, client.NetworkListOptions{Filters: client.Filters{}.Add("name", name)})
	if err != nil {
		return nil, r.wrap(err, "list networks named %s", name)
	}
	var out []network.Summary
	for _, n := range list.Items {
		if n.Name == name { // the name filter matches substrings
			out = append(out, n)
		}
	}
	return out, nil
}

// networks lists the networks reeve owns.
func (r *Runtime) networks(ctx context.Context) ([]reeve.NetworkState, error) {
	list, err := r.c.NetworkList(ctx, client.NetworkListOptions{Filters: client.Filters{}.Add("label", LabelManaged+"="+r.managed)})
	if err != nil {
		return nil, r.wrap(err, "list networks")
	}
	out := []reeve.NetworkState{}
	seen := map[string]int{} // engine name → index in out
	for _, n := range list.Items {
		if i, dup := seen[n.Name]; dup {
			// The engine allows two networks of one name (a create cut
			// short by a crash can land after the next one). Containers
			// cannot join an ambiguous name, so report it as changed: the
			// planner takes its users down, removes every network of the
			// name and creates one again.
			out[i].ConfigHash = ""
			continue
		}
		seen[n.Name] = len(out)
		out = append(out, reeve.NetworkState{
			ID:         n.ID,
			AppUUID:    n.Labels[LabelAppUUID],
			Name:       n.Labels[LabelNetworkName],
			ConfigHash: n.Labels[LabelConfigHash],
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].AppUUID != out[j].AppUUID {
			return out[i].AppUUID < out[j].AppUUID
		}
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}
