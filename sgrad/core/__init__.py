"""The pure update rules: decoupled (DNI/cDNI) steps, recurrent windows, two clocks, optimizers."""
