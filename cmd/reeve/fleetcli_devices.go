package main

// Devices: listing, details, and what an operator changes on one.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

func devicesCmd() *cobra.Command {
	var fleet string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "devices [--fleet F]",
		Short: "List devices, of every fleet or of one",
		Long: `List devices: short UUID (full in --json), name, fleet, reported status,
whether the device is online, the release it runs (-> the one it should
run, while it moves) and when the server last heard from it.`,
		Args: exactArgs(0),
		RunE: withClient(func(cmd *cobra.Command, c *serverapi.Client, _ []string) error {
			devs, err := c.Devices(cmd.Context(), fleet)
			if err != nil {
				return err
			}
			if asJSON {
				return printList(cmd.OutOrStdout(), devs)
			}
			deviceTable(devs, time.Now()).print(cmd.OutOrStdout(), "no devices: provision one with the config.json of reeve key create")
			return nil
		}),
	}
	cmd.Flags().StringVar(&fleet, "fleet", "", "only this fleet's devices (name or id)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// resolveDevice turns what the user typed into a device UUID: a whole UUID
// as it is, else a prefix of at least shortUUID characters that matches
// exactly one device.
func resolveDevice(ctx context.Context, c *serverapi.Client, arg string) (string, error) {
	if reeve.ValidUUID(arg) {
		return arg, nil
	}
	prefix := strings.ReplaceAll(strings.ToLower(arg), "-", "")
	if len(prefix) < shortUUID {
		return "", usageError{fmt.Errorf("device %q: give its UUID, or at least %d characters of it", arg, shortUUID)}
	}
	devs, err := c.Devices(ctx, "")
	if err != nil {
		return "", err
	}
	var matches []string
	for _, d := range devs {
		if strings.HasPrefix(strings.ReplaceAll(d.UUID, "-", ""), prefix) {
			matches = append(matches, d.UUID)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return "", reeve.Errorf(reeve.CodeNotFound, "no device has a UUID starting with %s: see reeve devices", arg)
	default:
		return "", usageError{fmt.Errorf("%s is the start of %d devices' UUIDs (%s): give more of it", arg, len(matches), strings.Join(matches, ", "))}
	}
}

// deviceRun makes the RunE of a command whose first argument is a device:
// run gets its whole UUID.
func deviceRun(run func(cmd *cobra.Command, c *serverapi.Client, uuid string, args []string) error) func(*cobra.Command, []string) error {
	return withClient(func(cmd *cobra.Command, c *serverapi.Client, args []string) error {
		uuid, err := resolveDevice(cmd.Context(), c, args[0])
		if err != nil {
			return err
		}
		return run(cmd, c, uuid, args[1:])
	})
}

func deviceCmd() *cobra.Command {
	return groupCmd("device", "Show, rename, pin, tag and remove a device (UUID or its first 7+ characters)",
		deviceShowCmd(), deviceRenameCmd(), devicePinCmd(), deviceUnpinCmd(),
		deviceRemoveCmd(), deviceRevokeKeyCmd(), deviceTagCmd(), deviceUntagCmd())
}

func deviceShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show UUID",
		Short: "Show a device: what it runs, what it should run, what it reported",
		Args:  exactArgs(1),
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, _ []string) error {
			d, err := c.Device(cmd.Context(), uuid)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), d)
			}
			printDevice(cmd.OutOrStdout(), d, time.Now())
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func deviceRenameCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rename UUID NAME",
		Short: "Rename a device",
		Args:  exactArgs(2),
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, args []string) error {
			d, err := c.UpdateDevice(cmd.Context(), uuid, serverapi.UpdateDeviceRequest{Name: &args[0]})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "renamed device %s to %s\n", short(uuid, shortUUID), d.Name)
			return nil
		}),
	}
}

func devicePinCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "pin UUID COMMIT",
		Short: "Make a device run one release of its fleet, whatever the fleet runs",
		Args:  exactArgs(2),
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, args []string) error {
			d, err := c.UpdateDevice(cmd.Context(), uuid, serverapi.UpdateDeviceRequest{PinnedRelease: &args[0]})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "device %s is pinned to release %s\n", short(uuid, shortUUID), d.PinnedRelease)
			return nil
		}),
	}
}

func deviceUnpinCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unpin UUID",
		Short: "Unpin a device: it runs what its fleet runs again",
		Args:  exactArgs(1),
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, _ []string) error {
			unpin := ""
			if _, err := c.UpdateDevice(cmd.Context(), uuid, serverapi.UpdateDeviceRequest{PinnedRelease: &unpin}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "device %s runs what its fleet runs\n", short(uuid, shortUUID))
			return nil
		}),
	}
}

func deviceRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm UUID",
		Short: "Remove a device and its variables from the server",
		Args:  exactArgs(1),
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, _ []string) error {
			if err := c.DeleteDevice(cmd.Context(), uuid); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed device %s\n", uuid)
			return nil
		}),
	}
}

func deviceRevokeKeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke-key UUID",
		Short: "Revoke a device's key: the server refuses it until it is provisioned again",
		Args:  exactArgs(1),
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, _ []string) error {
			if err := c.RevokeDeviceKey(cmd.Context(), uuid); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked the key of device %s: it is refused until it is provisioned again\n", uuid)
			return nil
		}),
	}
}

func deviceTagCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "tag UUID KEY=VALUE",
		Short: "Set a tag on a device",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := exactArgs(2)(cmd, args); err != nil {
				return err
			}
			_, _, err := splitAssignment(args[1], "KEY")
			return err
		},
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, args []string) error {
			key, value, _ := splitAssignment(args[0], "KEY") // checked by Args
			if _, err := c.SetTag(cmd.Context(), uuid, key, value); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tagged device %s with %s=%s\n", short(uuid, shortUUID), key, value)
			return nil
		}),
	}
}

func deviceUntagCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "untag UUID KEY",
		Short: "Remove a tag from a device",
		Args:  exactArgs(2),
		RunE: deviceRun(func(cmd *cobra.Command, c *serverapi.Client, uuid string, args []string) error {
			if err := c.DeleteTag(cmd.Context(), uuid, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed tag %s from device %s\n", args[0], short(uuid, shortUUID))
			return nil
		}),
	}
}
