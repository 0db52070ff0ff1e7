"""How the platform is deployed on Ray Serve: the Serve config it renders (`serve_config`) and the declarative
deploy through Ray's Serve controller (`ray_serve`). Nothing here imports the gateway (`serving.api`)."""
