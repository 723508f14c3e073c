"""Where kernels run: jupyter_client kernel provisioners for local processes and Docker containers."""
