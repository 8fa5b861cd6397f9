"""One thin APIRouter per resource."""
