"""Projects: the unit of work inside an organisation, with visibility and members."""
