"""octopus-crm-sync's own namespace (see ``octopus_crm.core``)."""
