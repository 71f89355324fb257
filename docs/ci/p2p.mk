# The P2P contract targets, calling the p2p CLI. Include it from your Makefile:
#
#   include p2p.mk
#
# Needs: P2P_URL, P2P_TOKEN (a CI token for the integration), and optionally P2P_INTEGRATION (defaults to the
# repository directory name) and P2P_TAG (defaults to the git commit). Each test target runs its suite through the
# matching *_TEST command (override them) and reports the result to the portal as a check on the artifact.

P2P_INTEGRATION ?= $(notdir $(CURDIR))
P2P_TAG ?= $(shell git rev-parse HEAD)
P2P ?= ./p2p
P2P_FIRST_STAGE ?= dev
P2P_WAIT_TIMEOUT ?= 3600
# The environments (buckets) the two promotion targets move between; match your workflow.
P2P_STAGE_BEFORE_EXTENDED ?= integration
P2P_STAGE_EXTENDED ?= extended-test
P2P_STAGE_PROD ?= prod

FUNCTIONAL_TEST ?= echo "set FUNCTIONAL_TEST to run the functional tests" && false
NFT_TEST ?= echo "set NFT_TEST to run the non-functional tests" && false
INTEGRATION_TEST ?= echo "set INTEGRATION_TEST to run the integration tests" && false
EXTENDED_TEST ?= echo "set EXTENDED_TEST to run the extended tests" && false

.PHONY: p2p-cli p2p-build p2p-functional p2p-nft p2p-integration p2p-extended-test \
        p2p-promote-to-extended-test p2p-promote-to-prod

p2p-cli:
	@test -x $(P2P) || { curl -fsSL -o $(P2P) "$(P2P_URL)/api/v1/cli/p2p" && chmod +x $(P2P); }

# Build, push with short-lived credentials from the portal, and register the image in the first stage.
p2p-build: p2p-cli
	eval "$$($(P2P) login $(P2P_INTEGRATION) $(P2P_FIRST_STAGE))"; \
	image="$$($(P2P) login $(P2P_INTEGRATION) $(P2P_FIRST_STAGE) --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["image"])')"; \
	docker build -t "$$image:$(P2P_TAG)" . && docker push "$$image:$(P2P_TAG)" && \
	$(P2P) push $(P2P_INTEGRATION) $(P2P_FIRST_STAGE) "$$image:$(P2P_TAG)"

# Run a suite and report it as a check (passed or failed) on the artifact; the target fails when the suite does.
define p2p_check
	@if $(2); then status=passed; else status=failed; fi; \
	$(P2P) check $(P2P_INTEGRATION):$(P2P_TAG) $(1) $$status $${P2P_CHECK_URL:+--url "$$P2P_CHECK_URL"}; \
	test $$status = passed
endef

p2p-functional: p2p-cli
	$(call p2p_check,functional,$(FUNCTIONAL_TEST))

p2p-nft: p2p-cli
	$(call p2p_check,nft,$(NFT_TEST))

p2p-integration: p2p-cli
	$(call p2p_check,integration,$(INTEGRATION_TEST))

p2p-extended-test: p2p-cli
	$(call p2p_check,extended,$(EXTENDED_TEST))

# --wait exits 0 when the copy succeeded, 1 when it failed, was rejected or cancelled, 2 on timeout.
p2p-promote-to-extended-test: p2p-cli
	$(P2P) promote $(P2P_INTEGRATION):$(P2P_TAG) --source-stage $(P2P_STAGE_BEFORE_EXTENDED) --dest-stage $(P2P_STAGE_EXTENDED) \
	  --wait --timeout $(P2P_WAIT_TIMEOUT)

p2p-promote-to-prod: p2p-cli
	$(P2P) promote $(P2P_INTEGRATION):$(P2P_TAG) --source-stage $(P2P_STAGE_EXTENDED) --dest-stage $(P2P_STAGE_PROD) \
	  --wait --timeout $(P2P_WAIT_TIMEOUT)
