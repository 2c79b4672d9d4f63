from mer_builder.cli import main

raise SystemExit(main())
