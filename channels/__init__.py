"""Channel adapters: one module per provider, all behind :class:`channels.base.Provider`."""
