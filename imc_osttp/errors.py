"""Errors a user can act on: the CLI prints them as one line, never a traceback."""


class UserError(Exception):
    """Base class: bad input from the user (config, data, command line)."""


class ConfigError(UserError):
    """A config value is missing, misspelled or out of range; the message names the key."""


class DataError(UserError):
    """A data file is missing or corrupt; the message says where we looked and what to do."""


class PluginError(UserError):
    """A plugin cannot be loaded or registers something invalid; the message names the plugin."""
