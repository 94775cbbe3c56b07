from posthog_customerio.cli.main import main

main()
