"""Guards for what reaches captionlab from outside: uploaded images (`images`) and paths named in forms (`paths`)."""
